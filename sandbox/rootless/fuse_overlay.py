"""fuse-overlayfs: the image's layers with their true owners under another mapping than the store's.

The layer store is unpacked with the storage mapping (container 0 -> the user, 1.. -> the
subordinate ids). A container with another mapping (--userns=keep-id: the user's uid is itself
inside) would see every root-owned image file as the user's and the rest shifted by one, and
one host id cannot show as two container ids. Rootless, the kernel offers no id-shifting view
(idmapped mounts need CAP_SYS_ADMIN in the filesystem's user namespace), so, as podman does,
fuse-overlayfs merges the layers and translates owners on the fly (-o uidmapping/gidmapping):
no copy, nothing chowned, the store stays shared.

Two uses (spec.Root):
- Root.shifted: fuse-overlayfs shows the lower layers (read-only) at that path; the kernel
  overlay (with the container's own upper dir) is mounted on top of it by PID 1, so files the
  container writes land in the upper dir with the container's ids (keep-id: the user's own).
- Root kind "fuse-overlay": fuse-overlayfs is the whole root (lowers + upper), the fallback
  where the kernel cannot mount overlay in a user namespace.

Process model: the daemon runs as root of the container's user namespace (it must see the
container's ids), forked by the intermediate before the PID namespace exists (so it is never
the container's PID 1 and the container cannot see it) and outside the container's cgroup.
The intermediate opens /dev/fuse and mounts it itself, in the mount namespace the container
will have; the daemon gets the connection as /dev/fd/N and runs in a copy of that namespace
from which it has detached the mount. The mount thus lives only in the container's mount
namespace: when the container's last process exits, the kernel drops it, the FUSE connection
ends and the daemon exits by itself. No pid to track, no signal to send: a SIGKILLed sandbox
(PID 1 dies by PDEATHSIG), or one killed while the daemon starts (the intermediate dies with
it, and its namespace with the mount), leaves no daemon behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sandbox.errors import ContainerError, HostError
from sandbox.rootless import syscalls, userns
from sandbox.rootless.idmap import IdRange

if TYPE_CHECKING:
    from sandbox.spec import Root

PROGRAM = "fuse-overlayfs"
INSTALL_HINT = "install fuse-overlayfs (apt install fuse-overlayfs) and make /dev/fuse usable"

# (id inside the container's user namespace, id shown in the mount, count) per range.
Shift = tuple[tuple[int, int, int], ...]


def shift(storage: Sequence[IdRange], container: Sequence[IdRange]) -> Shift:
    """What fuse-overlayfs must translate so that a file stored as image id N shows as N.

    A layer file owned by image id N is owned on the host by storage(N); running in the
    container's namespace, the daemon sees it as container^-1(storage(N)) and shows N.
    Host ids the container does not map are left out (they show as the overflow id).
    """
    out: list[tuple[int, int, int]] = []
    for s in storage:
        for c in container:
            low = max(s.outside, c.outside)
            high = min(s.outside + s.size, c.outside + c.size)
            if low < high:
                out.append((c.inside + low - c.outside, s.inside + low - s.outside, high - low))
    return tuple(sorted(out))


def option(ranges: Shift) -> str:
    """fuse-overlayfs's uidmapping/gidmapping value: SEEN:SHOWN:COUNT, all joined by ':'."""
    return ":".join(f"{seen}:{shown}:{count}" for seen, shown, count in ranges)


def program() -> str:
    """The fuse-overlayfs binary, checked before anything is created."""
    path = shutil.which(PROGRAM)
    if path is None:
        raise HostError(
            "fuse-overlayfs is not installed: it shows the image's files with their owners "
            "under this id mapping",
            hint=f"{INSTALL_HINT}, or run without --userns=keep-id",
        )
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC))
    except OSError as e:
        raise HostError(
            "cannot open /dev/fuse: fuse-overlayfs shows the image's files with their owners "
            "under this id mapping",
            context=e.strerror,
            hint="as root: modprobe fuse; chmod 0666 /dev/fuse (as distributions ship it)",
        ) from e
    return path


def arguments(
    lowers: Sequence[Path],
    uids: Shift,
    gids: Shift,
    *,
    upper: Path | None = None,
    work: Path | None = None,
) -> list[str]:
    """fuse-overlayfs's command line but the mount point: lowers lowest first (as spec.Root)."""
    for path in (*lowers, upper, work):
        if path is not None and ("," in str(path) or ":" in str(path)):
            # fuse-overlayfs splits its options on ',' and lowerdir on ':', with no escape.
            raise ContainerError(
                f"fuse-overlayfs cannot use the path {path} (it contains ',' or ':')",
                hint="set data_root in config.yaml to a directory without ',' or ':'",
            )
    options = [f"lowerdir={':'.join(str(p) for p in reversed(lowers))}"]
    if upper is not None and work is not None:
        options += [f"upperdir={upper}", f"workdir={work}"]
    if uids:
        options.append(f"uidmapping={option(uids)}")
    if gids:
        options.append(f"gidmapping={option(gids)}")
    return [PROGRAM, "-o", ",".join(options)]


def mount_root(root: Root) -> None:
    """The intermediate's part of the root: the shifted lowers, or the whole fuse root."""
    if root.kind == "fuse-overlay":
        argv = arguments(
            root.lowers, root.uid_shift, root.gid_shift, upper=root.upper, work=root.work
        )
        mount(argv, root.path, readonly=False)
    else:
        assert root.shifted is not None
        mount(arguments(root.lowers, root.uid_shift, root.gid_shift), root.shifted, readonly=True)


def mount(argv: list[str], target: Path, *, readonly: bool) -> None:
    """Mount a FUSE filesystem at target in our mount namespace, served by fuse-overlayfs
    running in a namespace of its own that does not hold the mount.

    We open /dev/fuse and mount it ourselves; the daemon gets the connection as /dev/fd/N
    (libfuse's way for a caller that mounts). Runs as root of the container's user namespace,
    single-threaded, in the mount namespace the container will have, before the PID namespace
    is unshared (see the module docstring for why).
    """
    # Nothing mounted here may propagate to the daemon's copy below, or anywhere else.
    syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
    try:
        device = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise ContainerError("cannot open /dev/fuse", context=e.strerror, hint=INSTALL_HINT) from e
    try:
        flags = syscalls.MS_NODEV | syscalls.MS_NOATIME | (syscalls.MS_RDONLY if readonly else 0)
        # fuse-overlayfs's own options (it checks permissions through default_permissions;
        # allow_other lets the container's other users in).
        data = (
            f"fd={device},rootmode=40000,user_id={os.getuid()},group_id={os.getgid()},"
            "default_permissions,allow_other"
        )
        try:
            syscalls.mount(PROGRAM, str(target), f"fuse.{PROGRAM}", flags, data)
        except OSError as e:
            raise ContainerError(
                f"cannot mount FUSE on {target}", context=e.strerror, hint=INSTALL_HINT
            ) from e
        try:
            _start([*argv, f"/dev/fd/{device}"], device, target)
        except BaseException:
            # The connection ends with the mount: nothing is left to serve it.
            with contextlib.suppress(OSError):
                syscalls.umount2(str(target), syscalls.MNT_DETACH)
            raise
    finally:
        os.close(device)


def _start(argv: list[str], device: int, target: Path) -> None:
    """fork + exec fuse-overlayfs; its first process exits 0 once it serves (the daemon it
    forks goes on, in a session of its own, stdio on /dev/null)."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            # A mount namespace of its own without the mount: otherwise the daemon would hold
            # the filesystem it serves, and neither would ever go away.
            syscalls.unshare(syscalls.CLONE_NEWNS)
            syscalls.umount2(str(target), syscalls.MNT_DETACH)
            null = os.open("/dev/null", os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(null, 1)
            os.dup2(write_end, 2)
            # Nothing of ours (the protocol socket above all) may stay open in the daemon.
            os.closerange(3, device)
            os.closerange(device + 1, _max_fd())
            os.set_inheritable(device, True)
            os.execvp(argv[0], argv)
        except OSError as e:
            os.write(2, f"{argv[0]}: {e}\n".encode())
        os._exit(127)
    os.close(write_end)
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(read_end, 4096)
        except InterruptedError:
            continue
        if not chunk:
            break
        if len(chunks) < 4:  # the last lines say why it failed; the rest is drained
            chunks.append(chunk)
    os.close(read_end)
    status = userns.wait_pid(pid)
    if os.waitstatus_to_exitcode(status) != 0:
        lines = b"".join(chunks).decode("utf-8", "replace").strip().splitlines()
        raise ContainerError(
            "fuse-overlayfs failed to serve the container's root",
            context=lines[-1] if lines else f"exit status {os.waitstatus_to_exitcode(status)}",
            hint="run 'sandbox doctor' (checks fuse and fuse-overlayfs)",
        )


def _max_fd() -> int:
    try:
        return int(os.sysconf("SC_OPEN_MAX"))
    except (ValueError, OSError):
        return 65536
