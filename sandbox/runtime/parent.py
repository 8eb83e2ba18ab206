"""The caller's side of the parent/child protocol, shared by `sandbox run` and `sandbox exec`:
forwarding signals to the process that runs the command, receiving and sizing the pty, waiting
for execve (EOF on the close-on-exec channel), and relaying the terminal.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from types import FrameType

from sandbox import spec as specs
from sandbox.errors import ContainerError
from sandbox.rootless.channel import Channel, ChannelClosed
from sandbox.runtime import init


class SignalForwarder:
    """Passes the signals `sandbox run` (or `exec`) receives on to the process it started.

    Signals that arrive before the command runs are held back: a PID 1 without a handler
    ignores them, so delivering them during setup would lose them.
    """

    def __init__(self) -> None:
        self.pid: int | None = None
        self.pending: list[int] = []
        self.saved: dict[int, object] = {}
        self.on_winch: Callable[[], None] | None = None

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGWINCH:
            if self.on_winch is not None:
                self.on_winch()
            return
        if self.pid is None:
            self.pending.append(signum)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)

    def arm(self, pid: int) -> None:
        self.pid = pid
        for signum in self.pending:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        self.pending.clear()

    @contextlib.contextmanager
    def installed(self) -> Iterator[SignalForwarder]:
        for signum in init.FORWARDED:
            self.saved[signum] = signal.signal(signum, self._handle)
        try:
            yield self
        finally:
            for number, handler in self.saved.items():
                signal.signal(number, handler)  # type: ignore[arg-type]


# What to do with the container's output while it runs (given the pty master, if any); the
# default relays the pty to the caller's terminal. The monitor of a detached container writes
# logs instead.
Pump = Callable[[specs.ContainerSpec, "int | None"], None]


def relay_terminal(spec: specs.ContainerSpec, master: int | None) -> None:
    if master is None:
        return
    from sandbox.runtime import tty  # with a terminal only (termios, tty)

    stdin = 0 if spec.process.interactive else None
    with tty.raw_mode(0) if stdin is not None else contextlib.nullcontext():
        tty.relay(master, stdin=stdin)


def receive_pty(channel: Channel, forwarder: SignalForwarder) -> int:
    """Steps 6-7: the pty master from the container, sized like the caller's terminal and
    kept so on SIGWINCH."""
    _, fds = channel.expect("pty")
    if len(fds) != 1:
        raise ContainerError("internal protocol error", context="expected one pty fd")
    master = fds[0]
    from sandbox.runtime import tty

    source = tty.caller_terminal()
    tty.copy_window_size(source, master)
    forwarder.on_winch = lambda: tty.copy_window_size(source, master)
    channel.send("pty_ready")
    return master


def wait_for_exec(channel: Channel) -> None:
    """EOF on the close-on-exec channel means execve succeeded; an error message means not."""
    try:
        while True:
            channel.recv()
    except ChannelClosed:
        return
