"""The caller's side of a container terminal: raw mode, window size, and the byte relay.

The pty itself belongs to the container's devpts (init.py opens it and sends us the master).
We set its window size before the command starts, follow SIGWINCH, and copy bytes both ways
until the container side closes (read() on the master fails with EIO once every process
holding the slave has exited).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import struct
import termios
import tty
from collections.abc import Iterator

_WINSIZE = struct.Struct("HHHH")
_CHUNK = 65536
EOT = b"\x04"


def caller_terminal() -> int | None:
    """The fd whose window size the container's pty should follow."""
    for fd in (1, 0, 2):
        if os.isatty(fd):
            return fd
    return None


def copy_window_size(source: int | None, master: int) -> None:
    if source is None:
        size = _WINSIZE.pack(24, 80, 0, 0)
    else:
        try:
            size = fcntl.ioctl(source, termios.TIOCGWINSZ, b"\0" * _WINSIZE.size)
        except OSError:
            return
    fcntl.ioctl(master, termios.TIOCSWINSZ, size)


@contextlib.contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """Put the caller's terminal in raw mode (keys go to the container), restore it after."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def relay(master: int, *, stdin: int | None, stdout: int = 1) -> None:
    """Copy stdin -> master and master -> stdout until the container side hangs up."""
    readers = [master] + ([stdin] if stdin is not None else [])
    pending = b""
    while True:
        writers = [master] if pending else []
        try:
            readable, writable, _ = select.select(readers, writers, [])
        except InterruptedError:
            continue
        if master in writable:
            try:
                done = os.write(master, pending)
                pending = pending[done:]
            except OSError as e:
                if e.errno != errno.EAGAIN:
                    pending = b""
        if stdin is not None and stdin in readable:
            data = _read(stdin)
            if data:
                pending += data
            else:
                # EOF on our stdin: the pty has no half-close, so send the EOF character
                # (what a user's ^D would do), and stop reading.
                pending += EOT
                readers.remove(stdin)
                stdin = None
        if master in readable:
            data = _read(master)
            if not data:
                return
            _write_all(stdout, data)


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, _CHUNK)
    except OSError as e:
        if e.errno == errno.EIO:
            return b""
        raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            done = os.write(fd, view)
        except BrokenPipeError:
            return
        view = view[done:]
