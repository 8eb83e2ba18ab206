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

import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from sandbox.errors import HostError, SandboxError
from sandbox.rootless import syscalls
from sandbox.rootless.channel import Channel, ChannelClosed
from sandbox.rootless.idmap import IdMapping, write_mapping

Target = Callable[[Channel], int]


def assert_single_threaded() -> None:
    if threading.active_count() != 1:
        names = ", ".join(t.name for t in threading.enumerate())
        raise SandboxError(
            "internal error: cannot create namespaces from a threaded process",
            context=f"threads: {names}",
        )


def spawn(
    mapping: IdMapping, target: Target, *, flags: int = 0, pdeathsig: int = signal.SIGKILL
) -> tuple[int, Channel]:
    """Fork a child that enters a new user namespace (plus `flags`) and runs target(channel).

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
        _child(mapping, target, child_end, flags, pdeathsig)
    child_end.close()
    try:
        parent_end.expect("unshared")
        write_mapping(pid, mapping)
        parent_end.send("mapped")
    except BaseException as error:
        parent_end.send_error(error)
        wait_pid(pid)
        parent_end.close()
        raise
    return pid, parent_end


def _child(
    mapping: IdMapping, target: Target, channel: Channel, flags: int, pdeathsig: int
) -> None:  # pragma: no cover - runs in the child
    code = 125
    host_uid = os.getuid()
    try:
        # Die with the parent: a container must not outlive the process that answers for it.
        syscalls.prctl(syscalls.PR_SET_PDEATHSIG, pdeathsig)
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
        channel.send("unshared")
        channel.expect("mapped")
        # Become root of the namespace in every id slot (the mapping makes us 0 already in
        # the effective ids; this also sets the real and saved ones, and drops no caps).
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
        if mapping.host_uid(0) != host_uid:
            # keep-id: root here is not our host uid, and the kernel made us non-dumpable for
            # the id change, which would shut the user (the namespace's owner) out of our
            # /proc/PID/ns files: the network helper joins PID 1's through them.
            syscalls.prctl(syscalls.PR_SET_DUMPABLE, 1)
        if not mapping.single:
            os.setgroups([])
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
    try:
        try:
            while True:
                message, fds = channel.recv()  # an "error" message raises here
                if on_message is not None:
                    on_message(message, fds)
                else:
                    for fd in fds:
                        os.close(fd)
        except ChannelClosed:
            pass
    finally:
        status = wait_pid(pid)
        channel.close()
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return 128 + os.WTERMSIG(status)
