"""Fork a child into a new user namespace that the parent maps with the user's id ranges.

The single-thread rule: the kernel refuses unshare(CLONE_NEWUSER) to a multi-threaded process,
and fork() of a threaded Python process can deadlock on a lock another thread held. So we fork
only while this process has exactly one thread (asserted), and the child unshares. Forking
instead of re-executing an interpreter saves its start-up (tens of ms per container).

Handshake (child C, parent P):
  1. C: unshare(CLONE_NEWUSER | extra)          -> "unshared"
  2. P: newuidmap/newgidmap on C's pid           -> "mapped"
  3. C: now uid/gid 0 in the namespace, runs its target with the channel.
A failure on either side is sent as an "error" message and re-raised by the other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from sandbox.errors import ContainerError, HostError, SandboxError
from sandbox.rootless import syscalls
from sandbox.rootless.channel import Channel, ChannelClosed
from sandbox.rootless.idmap import IdMapping, IdRange, write_mapping

Target = Callable[[Channel], int]


@dataclasses.dataclass(frozen=True)
class Within:
    """Spawn under another user namespace instead of the initial one (named networks, pods).

    The child first setns()es into `userns_fd` (the rootless netns holder's, which the user
    owns, so the child gets every capability there), then into each of `joins` (fd, CLONE_*)
    while it still has those capabilities, and only then unshares its own user namespace: a
    child of the holder's. `outer` is the holder's own mapping; the child's maps are written
    from inside the holder's namespace, in the holder's ids (newuidmap would check host subids).
    """

    userns_fd: int
    outer: IdMapping
    joins: tuple[tuple[int, int], ...] = ()


def assert_single_threaded() -> None:
    if threading.active_count() != 1:
        names = ", ".join(t.name for t in threading.enumerate())
        raise SandboxError(
            "internal error: cannot create namespaces from a threaded process",
            context=f"threads: {names}",
        )


def spawn(
    mapping: IdMapping,
    target: Target,
    *,
    flags: int = 0,
    pdeathsig: int = signal.SIGKILL,
    within: Within | None = None,
    meanwhile: int = 0,
) -> tuple[int, Channel]:
    """Fork a child that enters a new user namespace (plus `flags`) and runs target(channel).
    meanwhile: namespaces (CLONE_*) the child creates while we write its mapping.

    Returns once the child is mapped: (child pid, the parent's end of the channel). The child
    exits with target's return value; an exception in it is reported over the channel.
    """
    assert_single_threaded()
    parent_end, child_end = Channel.pair()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        parent_end.close()
        _child(mapping, target, child_end, flags, pdeathsig, within, meanwhile)
    child_end.close()
    try:
        parent_end.expect("unshared")
        if within is None:
            write_mapping(pid, mapping)
        else:
            write_mapping_within(within, pid, mapping)
        parent_end.send("mapped")
    except BaseException as error:
        parent_end.send_error(error)
        wait_pid(pid)
        parent_end.close()
        raise
    return pid, parent_end


def _child(
    mapping: IdMapping,
    target: Target,
    channel: Channel,
    flags: int,
    pdeathsig: int,
    within: Within | None = None,
    meanwhile: int = 0,
) -> None:  # pragma: no cover - runs in the child
    code = 125
    host_uid = os.getuid()
    parent = os.getppid()
    try:
        # Die with the parent: a container must not outlive the process that answers for it.
        syscalls.prctl(syscalls.PR_SET_PDEATHSIG, pdeathsig)
        if within is not None:
            _enter(within)
        try:
            syscalls.unshare(syscalls.CLONE_NEWUSER | flags)
        except OSError as e:
            raise HostError(
                "cannot create a user namespace",
                context=e.strerror,
                hint="run 'sandbox doctor'; unprivileged user namespaces may be "
                "disabled (sysctl user.max_user_namespaces, "
                "kernel.apparmor_restrict_unprivileged_userns)",
            ) from e
        become_root(channel, mapping, host_uid, meanwhile=meanwhile)
        if pdeathsig:
            # The kernel clears PDEATHSIG when the effective uid changes (keep-id: root here is
            # a subordinate id, not ours): set it again, and go now if the parent died meanwhile.
            syscalls.prctl(syscalls.PR_SET_PDEATHSIG, pdeathsig)
            if os.getppid() != parent:
                raise ContainerError("the process that started this container has gone")
        code = target(channel)
    except BaseException as error:
        channel.send_error(error)
        code = getattr(error, "exit_code", 125) if isinstance(error, SandboxError) else 125
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _enter(within: Within) -> None:  # pragma: no cover - runs in the child
    try:
        syscalls.setns(within.userns_fd, syscalls.CLONE_NEWUSER)
        # Joins come before our own user namespace exists: afterwards we would hold no
        # capability over a sibling's namespaces (their owner is the holder's namespace).
        for fd, nstype in within.joins:
            syscalls.setns(fd, nstype)
    except OSError as e:
        raise HostError(
            "cannot enter the rootless network namespace's user namespace",
            context=e.strerror,
            hint="'sandbox network ls' restarts a holder that died; see 'sandbox doctor'",
        ) from e


def relative_to(mapping: IdMapping, outer: IdMapping) -> IdMapping:
    """mapping (container ids -> host ids) re-expressed as container ids -> outer's ids, for a
    user namespace that is a child of outer's. Ranges split where outer's ranges do."""

    def convert(
        ranges: tuple[IdRange, ...], outer_ranges: tuple[IdRange, ...]
    ) -> tuple[IdRange, ...]:
        out: list[IdRange] = []
        for r in ranges:
            for o in outer_ranges:
                low = max(r.outside, o.outside)
                high = min(r.outside + r.size, o.outside + o.size)
                if low < high:
                    out.append(
                        IdRange(r.inside + low - r.outside, o.inside + low - o.outside, high - low)
                    )
            if sum(x.size for x in out if r.inside <= x.inside < r.inside + r.size) != r.size:
                raise HostError(
                    "the container's id mapping is not inside the rootless network namespace's",
                    context=f"{r.inside} {r.outside} {r.size}",
                )
        return tuple(sorted(out, key=lambda x: x.inside))

    return dataclasses.replace(
        mapping, uids=convert(mapping.uids, outer.uids), gids=convert(mapping.gids, outer.gids)
    )


def write_mapping_within(within: Within, pid: int, mapping: IdMapping) -> None:
    """Write pid's uid_map and gid_map from a child that joined within's user namespace (the
    kernel wants the opener and the writer to hold CAP_SETUID/CAP_SETGID in the parent
    namespace of pid's; the user owns that one, so setns gives them)."""
    relative = relative_to(mapping, within.outer)
    lines = {
        "uid_map": "".join(f"{r.inside} {r.outside} {r.size}\n" for r in relative.uids),
        "gid_map": "".join(f"{r.inside} {r.outside} {r.size}\n" for r in relative.gids),
    }
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the forked child
        os.close(read_end)
        code = 0
        try:
            syscalls.setns(within.userns_fd, syscalls.CLONE_NEWUSER)
            for name, text in lines.items():
                with open(f"/proc/{pid}/{name}", "w") as f:
                    f.write(text)
        except BaseException as error:
            os.write(write_end, str(error).encode()[:500])
            code = 1
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as errors:
        message = errors.read().decode(errors="replace")
    status = wait_pid(child)
    if message or status != 0:
        raise HostError(
            f"cannot write the id mapping of process {pid} in the rootless network namespace",
            context=message or f"wait status {status}",
        )


def become_root(channel: Channel, mapping: IdMapping, host_uid: int, *, meanwhile: int = 0) -> None:
    """Steps 1-2 from the child's side, right after its unshare(CLONE_NEWUSER): wait for the
    parent to write the mapping, then be root of the namespace. meanwhile: namespaces to
    create while the parent runs newuidmap and newgidmap (a network namespace takes ~0.5 ms;
    we hold every capability in our new user namespace even before it is mapped)."""
    channel.send("unshared")
    refused = None
    if meanwhile:
        try:
            syscalls.unshare(meanwhile)
        except OSError as e:
            refused = e  # reported once mapped: the parent is running the helpers now
    channel.expect("mapped")
    if refused is not None:
        raise ContainerError("cannot create the container's namespaces", context=refused.strerror)
    # Root in every id slot (the mapping makes us 0 already in the effective ids; this also
    # sets the real and saved ones, and drops no caps).
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    if mapping.host_uid(0) != host_uid:
        # keep-id, or a config's own mapping: root here is not our host uid, and the kernel
        # made us non-dumpable for the id change, which would shut the user (the namespace's
        # owner) out of our /proc/PID/ns files (the network helper, exec and kill use them).
        syscalls.prctl(syscalls.PR_SET_DUMPABLE, 1)
    if not mapping.single:
        os.setgroups([])


def wait_pid(pid: int) -> int:
    """waitpid() that retries on EINTR; 0 when the child was already reaped."""
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            return status
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue


def run(
    mapping: IdMapping,
    target: Target,
    *,
    flags: int = 0,
    on_message: Callable[[dict[str, Any], list[int]], None] | None = None,
) -> int:
    """Run target in a mapped user namespace and wait for it; re-raises the child's error.

    Messages the target sends (results, progress) are handed to on_message in order.
    """
    pid, channel = spawn(mapping, target, flags=flags)
    child_done = False  # it hung up or sent its error: it is exiting, waiting is enough
    try:
        while True:
            try:
                message, fds = channel.recv()  # an "error" message raises here
            except ChannelClosed:
                child_done = True
                break
            except SandboxError:
                child_done = True
                raise
            if on_message is not None:
                on_message(message, fds)
            else:
                for fd in fds:
                    os.close(fd)
    except BaseException:
        if not child_done:
            # Our own failure (an interrupt, a message we refused): without this the child
            # would finish its whole task (a layer's unpacking) before we could return.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        raise
    finally:
        status = wait_pid(pid)
        channel.close()
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return 128 + os.WTERMSIG(status)


def run_joined(pid: int, body: Callable[[], object]) -> str | None:
    """Run body() in a forked child that joined pid's user and network namespaces.

    The user namespace comes first: it gives the child the capabilities to join the network
    namespace it owns. Returns None on success, else what went wrong (the exception's text, or
    the child's wait status), for the caller to wrap in an error that says what it was doing.
    """
    from sandbox.rootless import syscalls

    assert_single_threaded()  # setns(CLONE_NEWUSER) refuses a threaded process
    fds = [os.open(f"/proc/{pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC) for ns in ("user", "net")]
    read_end, write_end = os.pipe()
    try:
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the forked child
            os.close(read_end)
            code = 0
            try:
                syscalls.setns(fds[0], syscalls.CLONE_NEWUSER)
                syscalls.setns(fds[1], syscalls.CLONE_NEWNET)
                body()
            except BaseException as error:
                os.write(write_end, f"{type(error).__name__}: {error}".encode()[:500])
                code = 1
            os._exit(code)
        os.close(write_end)
        write_end = -1
        with os.fdopen(read_end, "rb") as errors:
            read_end = -1
            message = errors.read().decode(errors="replace")
        status = wait_pid(child)
    finally:
        for fd in (*fds, read_end, write_end):
            if fd >= 0:
                os.close(fd)
    if message or status != 0:
        return message or f"wait status {status}"
    return None
