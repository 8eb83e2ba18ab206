"""The container's mount namespace: rootfs, /proc, /sys, /dev, volumes, pivot_root.

Everything here runs as PID 1 of the container, inside its user and mount namespaces, before
pivot_root. Mount targets inside the rootfs are resolved with openat2(RESOLVE_IN_ROOT) and
mounted through /proc/self/fd/N, so a symlink the image planted (/etc/hosts -> /host/etc/x,
/proc -> /) can never send a mount outside the container's root.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from sandbox.errors import ContainerError
from sandbox.rootless import syscalls
from sandbox.rootless.syscalls import (
    MNT_DETACH,
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
)

# Mount option words -> (flags to set, flags to clear); the rest goes to the filesystem as data.
_FLAG_WORDS: dict[str, tuple[int, int]] = {
    "ro": (MS_RDONLY, 0),
    "rw": (0, MS_RDONLY),
    "nosuid": (MS_NOSUID, 0),
    "suid": (0, MS_NOSUID),
    "nodev": (MS_NODEV, 0),
    "dev": (0, MS_NODEV),
    "noexec": (MS_NOEXEC, 0),
    "exec": (0, MS_NOEXEC),
    "bind": (MS_BIND, 0),
    "rbind": (MS_BIND | MS_REC, 0),
    "relatime": (syscalls.MS_RELATIME, 0),
    "noatime": (syscalls.MS_NOATIME, 0),
    "strictatime": (syscalls.MS_STRICTATIME, 0),
    "nodiratime": (syscalls.MS_NODIRATIME, 0),
}
# Options that only matter to other runtimes or to SELinux, accepted and ignored.
_IGNORED_WORDS = {
    "z",
    "Z",
    "private",
    "rprivate",
    "shared",
    "rshared",
    "slave",
    "rslave",
    "defaults",
    "U",
    "copy",
    "nocopy",
}

# Devices every container gets, bind-mounted from the host (mknod is not allowed rootless).
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


@dataclasses.dataclass(frozen=True)
class Mount:
    """One entry of the OCI runtime spec's mounts list."""

    destination: str
    type: str  # "bind", "tmpfs", "proc", "sysfs", "devpts", "mqueue", ...
    source: str = ""
    options: tuple[str, ...] = ()


def parse_options(options: Sequence[str]) -> tuple[int, str]:
    flags = 0
    data = []
    for word in options:
        if word in _FLAG_WORDS:
            on, off = _FLAG_WORDS[word]
            flags = (flags | on) & ~off
        elif word not in _IGNORED_WORDS:
            data.append(word)
    return flags, ",".join(data)


def make_private() -> None:
    # Nothing we mount may propagate back to the host's namespace (or arrive from it).
    syscalls.mount(None, "/", None, MS_REC | MS_PRIVATE)


def mount_overlay(lowers: Sequence[Path], upper: Path, work: Path, target: Path) -> None:
    """Kernel overlay with userxattr (whiteouts and opaque marks as user.* xattrs).

    The option string is limited to one page, so we chdir to the layers' common parent and
    name the lower dirs relatively (podman's trick), which fits dozens of 64-hex layer paths.
    """
    parent = os.path.commonpath([str(p) for p in lowers]) if len(lowers) > 1 else None
    cwd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if parent:
            os.chdir(parent)
            names = [os.path.relpath(p, parent) for p in reversed(lowers)]
        else:
            names = [str(p) for p in reversed(lowers)]
        data = f"lowerdir={':'.join(names)},upperdir={upper},workdir={work},userxattr"
        syscalls.mount("overlay", str(target), "overlay", 0, data)
    except OSError as e:
        raise ContainerError(
            "cannot mount the container's overlay root",
            context=e.strerror,
            hint="set storage_driver: vfs in config.yaml if this kernel "
            "cannot mount overlay in a user namespace",
        ) from e
    finally:
        os.fchdir(cwd)
        os.close(cwd)


def open_in_root(root_fd: int, path: str, *, create: str | None = None, mode: int = 0o755) -> int:
    """An O_PATH fd for path inside the root, resolved as if root_fd were "/".

    create: None (must exist), "dir" or "file": create the leaf (and missing parent
    directories) of that kind when it does not exist.
    """
    relative = path.lstrip("/")
    if not relative:
        return os.dup(root_fd)
    flags = os.O_PATH
    try:
        return syscalls.openat2(root_fd, relative, flags)
    except FileNotFoundError:
        if create is None:
            raise
    parent, _, leaf = relative.rpartition("/")
    parent_fd = open_in_root(root_fd, parent, create="dir") if parent else os.dup(root_fd)
    try:
        # Create relative to the resolved parent: leaf is one component, never a path.
        if leaf in ("", ".", ".."):
            raise ContainerError(f"bad mount destination {path!r}")
        real = _dir_fd(parent_fd)
        try:
            try:
                if create == "dir":
                    os.mkdir(leaf, mode, dir_fd=real)
                else:
                    os.close(
                        os.open(
                            leaf,
                            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                            0o644,
                            dir_fd=real,
                        )
                    )
            except FileExistsError:
                pass  # a dangling symlink, or a race with ourselves: resolve again below
        finally:
            os.close(real)
        return syscalls.openat2(parent_fd, leaf, flags)
    finally:
        os.close(parent_fd)


def _dir_fd(path_fd: int) -> int:
    """A real directory fd for an O_PATH one (mkdirat and friends refuse O_PATH fds)."""
    return os.open(f"/proc/self/fd/{path_fd}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def mount_at(root_fd: int, mount: Mount, *, locked_flags_from: str | None = None) -> None:
    """Mount one spec entry at its destination inside the root."""
    flags, data = parse_options(mount.options)
    if mount.type == "bind":
        _bind(root_fd, mount, flags)
        return
    target = open_in_root(root_fd, mount.destination, create="dir")
    try:
        syscalls.mount(mount.source or mount.type, fd_path(target), mount.type, flags, data or None)
    except OSError as e:
        raise ContainerError(
            f"cannot mount {mount.type} on {mount.destination}", context=e.strerror
        ) from e
    finally:
        os.close(target)


def _bind(root_fd: int, mount: Mount, flags: int) -> None:
    try:
        source_stat = os.stat(mount.source)
    except OSError as e:
        raise ContainerError(f"cannot bind-mount {mount.source}", context=e.strerror) from e
    kind = "dir" if stat.S_ISDIR(source_stat.st_mode) else "file"
    target = open_in_root(root_fd, mount.destination, create=kind)
    try:
        bind_flags = MS_BIND | (flags & MS_REC)
        syscalls.mount(mount.source, fd_path(target), None, bind_flags)
        extra = flags & (MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
        if extra:
            # The fd still names the directory under the new mount: open it again to reach
            # the mount we just made, and remount that one.
            mounted = open_in_root(root_fd, mount.destination)
            try:
                remount_bind(fd_path(mounted), extra)
            finally:
                os.close(mounted)
    except OSError as e:
        raise ContainerError(
            f"cannot bind-mount {mount.source} on {mount.destination}", context=e.strerror
        ) from e
    finally:
        os.close(target)


def remount_bind(path: str, flags: int) -> None:
    """Add flags to a bind mount, keeping the ones the kernel locked.

    A mount that came from a more privileged namespace has its nosuid/nodev/noexec/ro/atime
    flags locked: a remount that would clear them fails with EPERM, so we carry them over.
    """
    st = os.statvfs(path)
    locked = 0
    for bit, flag in (
        (os.ST_RDONLY, MS_RDONLY),
        (os.ST_NOSUID, MS_NOSUID),
        (os.ST_NODEV, MS_NODEV),
        (os.ST_NOEXEC, MS_NOEXEC),
        (os.ST_NOATIME, syscalls.MS_NOATIME),
        (os.ST_NODIRATIME, syscalls.MS_NODIRATIME),
        (os.ST_RELATIME, syscalls.MS_RELATIME),
    ):
        if st.f_flag & bit:
            locked |= flag
    syscalls.mount(None, path, None, MS_REMOUNT | MS_BIND | locked | flags)


def setup_dev(root_fd: int, *, console: str | None = None) -> None:
    """Populate the container's /dev tmpfs: device binds, symlinks, /dev/console."""
    dev = open_in_root(root_fd, "/dev", create="dir")
    try:
        dev_dir = _dir_fd(dev)
    finally:
        os.close(dev)
    try:
        for name in DEVICES:
            host = f"/dev/{name}"
            if not os.path.exists(host):
                continue
            _touch(dev_dir, name)
            target = syscalls.openat2(dev_dir, name, os.O_PATH)
            try:
                syscalls.mount(host, fd_path(target), None, MS_BIND)
            finally:
                os.close(target)
        for name, points_to in (
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
            ("ptmx", "pts/ptmx"),
            ("core", "/proc/kcore"),
        ):
            with contextlib.suppress(FileExistsError):
                os.symlink(points_to, name, dir_fd=dev_dir)
        if console is not None:
            _touch(dev_dir, "console")
            target = syscalls.openat2(dev_dir, "console", os.O_PATH)
            try:
                syscalls.mount(console, fd_path(target), None, MS_BIND)
            finally:
                os.close(target)
    finally:
        os.close(dev_dir)


def _touch(dir_fd: int, name: str) -> None:
    fd = os.open(
        name, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666, dir_fd=dir_fd
    )
    os.close(fd)


def pivot(root: str) -> None:
    """pivot_root(".", ".") into root, then detach the old root stacked beneath it.

    The "." "." form (as runc does) needs no put_old directory inside the image, which might
    be read-only or a symlink.
    """
    os.chdir(root)
    syscalls.pivot_root(".", ".")
    # The old root is now mounted on top of "/"; make it private so the lazy unmount below
    # does not propagate into the host's mount namespace, then detach it.
    syscalls.mount(None, ".", None, MS_REC | syscalls.MS_SLAVE)
    syscalls.umount2(".", MNT_DETACH)
    os.chdir("/")


def remount_root_readonly() -> None:
    remount_bind("/", MS_RDONLY)
