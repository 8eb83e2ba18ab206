"""`sandbox cp`: files between the host and a container, through a tar stream.

The side that reads or writes inside the container is a child whose root IS the container's
root: for a running container it joins the container's user and mount namespaces; for a stopped
one it makes its own user and mount namespaces, mounts the container's root filesystem and
chroots into it. Container paths are then resolved with openat2(RESOLVE_IN_ROOT), so no symlink
in the container (absolute, or climbing with "..") can lead a copy onto the host. The host side
writes what comes out of a container with the same hostile-tarball-safe unpacker that unpacks
image layers. No thread is involved: the parent writes or reads the pipe while the child does
the other end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

from sandbox.config import Settings
from sandbox.errors import ContainerError, SandboxError, UsageError
from sandbox.images.unpack import UnpackOptions, unpack
from sandbox.rootless import mounts, syscalls, userns
from sandbox.rootless.channel import Channel, ChannelClosed
from sandbox.runtime import exec as exec_
from sandbox.runtime import state
from sandbox.runtime.state import Container, ContainerStore

_RESOLVE = syscalls.RESOLVE_IN_ROOT | syscalls.RESOLVE_NO_MAGICLINKS


@dataclasses.dataclass(frozen=True)
class Location:
    container: str | None  # None: a host path
    path: str


def parse_location(text: str) -> Location:
    """CONTAINER:PATH or a host path (a path with a slash before any colon is the host's)."""
    name, colon, path = text.partition(":")
    if colon and name and "/" not in name:
        if not path:
            raise UsageError(f"no path after {name}:", hint="use CONTAINER:/path")
        return Location(name, path if path.startswith("/") else "/" + path)
    return Location(None, text)


def copy(settings: Settings, source: str, destination: str) -> None:
    src, dest = parse_location(source), parse_location(destination)
    if (src.container is None) == (dest.container is None):
        raise UsageError(
            "one of SRC and DEST must be CONTAINER:PATH, the other a host path",
            hint="sandbox cp web:/etc/hostname . | sandbox cp ./file web:/tmp",
        )
    store = ContainerStore(settings.containers_root)
    if src.container is not None:
        container = store.lookup(src.container)
        _copy_out(store, container, src.path, Path(dest.path))
    else:
        assert dest.container is not None
        container = store.lookup(dest.container)
        _copy_in(store, container, Path(src.path), dest.path)


def _enter(
    store: ContainerStore, container: Container, work: Callable[[Channel], int]
) -> tuple[int, Channel]:
    """A child whose root is the container's root, running work(channel)."""
    spec = store.load_spec(container.id)
    if container.status == "running" and state.is_alive(container):
        return _join_running(container, work)

    def mounted(channel: Channel) -> int:
        root = spec.root
        if root.kind == "fuse-overlay" or (root.kind == "overlay" and root.shifted is not None):
            from sandbox.rootless import fuse_overlay

            # As the container sees its root (keep-id's true owners); the daemon ends with
            # this process's mount namespace.
            fuse_overlay.mount_root(root)
        mounts.make_private()
        if root.kind == "overlay":
            assert root.upper is not None and root.work is not None
            lowers = root.lowers if root.shifted is None else (root.shifted,)
            mounts.mount_overlay(lowers, root.upper, root.work, root.path)
        elif root.kind == "vfs" and not root.path.exists():
            raise ContainerError(
                f"container {container.name} has never run",
                hint="its root filesystem is made on first start",
            )
        os.chroot(root.path)
        os.chdir("/")
        return work(channel)

    return userns.spawn(spec.mapping, mounted, flags=syscalls.CLONE_NEWNS)


def _join_running(container: Container, work: Callable[[Channel], int]) -> tuple[int, Channel]:
    wanted = {"user", "mnt"}
    namespaces = {k: v for k, v in exec_._open_namespaces(container.pid).items() if k in wanted}
    userns.assert_single_threaded()
    parent_end, child_end = Channel.pair()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        parent_end.close()
        code = 125
        try:
            syscalls.prctl(syscalls.PR_SET_DUMPABLE, 0)
            flags = dict(exec_.JOIN_ORDER)
            for name in ("user", "mnt"):
                if name in namespaces:
                    syscalls.setns(namespaces[name], flags[name])
            code = work(child_end)
        except BaseException as error:
            child_end.send_error(error)
        finally:
            os._exit(code)
    child_end.close()
    for fd in namespaces.values():
        os.close(fd)
    return pid, parent_end


def _finish(pid: int, channel: Channel) -> None:
    """Wait for the child; its error, if any, is raised here."""
    try:
        with contextlib.suppress(ChannelClosed):
            while True:
                channel.recv()
    finally:
        channel.close()
        status = userns.wait_pid(pid)
    if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
        raise ContainerError("copying failed", context=f"helper exit status {status}")


def _resolve_in_container(path: str, flags: int = os.O_PATH) -> int:
    root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return syscalls.openat2(root, path.lstrip("/") or ".", flags, resolve=_RESOLVE)
    except FileNotFoundError as e:
        raise ContainerError(f"{path}: no such file or directory in the container") from e
    except OSError as e:
        raise ContainerError(f"cannot open {path} in the container", context=e.strerror) from e
    finally:
        os.close(root)


def _copy_out(store: ContainerStore, container: Container, path: str, dest: Path) -> None:
    # Into an existing directory under the source's name; otherwise as dest itself.
    if dest.is_dir():
        into, name = dest, os.path.basename(path.rstrip("/")) or "root"
    else:
        into, name = dest.parent, dest.name
        if not into.is_dir():
            raise UsageError(f"{into} is not a directory on the host")
    dest_fd = os.open(into, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    read_end, write_end = os.pipe()

    def produce(channel: Channel) -> int:
        os.close(read_end)
        parent, _, leaf = path.rstrip("/").rpartition("/")
        os.fchdir(_resolve_in_container(parent or "/", os.O_PATH | os.O_DIRECTORY))
        leaf = leaf or "."
        os.lstat(leaf)  # a clear error for a missing source, before the stream starts
        with os.fdopen(write_end, "wb") as pipe, tarfile.open(fileobj=pipe, mode="w|") as tar:
            # From its parent, by name: tarfile records a symlink as a symlink and descends
            # only into real directories.
            tar.add(leaf, arcname=name, recursive=True)
        return 0

    try:
        pid, channel = _enter(store, container, produce)
    except BaseException:
        os.close(write_end)
        os.close(read_end)
        os.close(dest_fd)
        raise
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as pipe:
            try:
                with tarfile.open(fileobj=pipe, mode="r|") as tar:
                    unpack(tar, dest_fd, UnpackOptions(chown=False))
            except tarfile.ReadError:
                pass  # nothing came: the child's error explains why
    finally:
        os.close(dest_fd)
        _finish(pid, channel)


def _copy_in(store: ContainerStore, container: Container, source: Path, path: str) -> None:
    try:
        os.lstat(source)
    except OSError as e:
        raise UsageError(f"cannot copy {source}", context=e.strerror) from e
    spec = store.load_spec(container.id)
    read_end, write_end = os.pipe()

    def consume(channel: Channel) -> int:
        os.close(write_end)
        try:
            target = _resolve_in_container(path)
        except ContainerError:
            target = None
        if target is not None and stat.S_ISDIR(os.fstat(target).st_mode):
            into, name = target, source.name
        else:
            parent, _, name = path.rstrip("/").rpartition("/")
            into = _resolve_in_container(parent or "/")
            if not stat.S_ISDIR(os.fstat(into).st_mode):
                raise ContainerError(f"{parent or '/'} is not a directory in the container")
        channel.send("name", name=name)
        # Not through /proc/self/fd: this process is outside the container's PID namespace,
        # so the container's /proc does not know it.
        into_dir = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=into)
        with os.fdopen(read_end, "rb") as pipe, tarfile.open(fileobj=pipe, mode="r|") as tar:
            unpack(tar, into_dir, UnpackOptions(chown=True, mapping=spec.mapping))
        return 0

    try:
        pid, channel = _enter(store, container, consume)
    except BaseException:
        os.close(write_end)
        os.close(read_end)
        raise
    os.close(read_end)
    try:
        try:
            message, _ = channel.expect("name")
        except SandboxError:
            os.close(write_end)
            raise
        with os.fdopen(write_end, "wb") as pipe, tarfile.open(fileobj=pipe, mode="w|") as tar:
            # Files copied in belong to the container's root, as with podman and docker.
            tar.add(source, arcname=str(message["name"]), filter=_as_root)
    except BrokenPipeError:
        pass  # the child failed; _finish reports why
    finally:
        _finish(pid, channel)


def _as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info
