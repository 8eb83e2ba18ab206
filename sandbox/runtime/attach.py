"""`sandbox attach`: the caller's terminal connected to a detached container's monitor.

Output arrives framed by stream (see monitor.Relay) and goes to our stdout or stderr; our
input goes to the container's stdin or terminal. With a terminal, Ctrl-P Ctrl-Q detaches (as
in podman and docker) and leaves the container running.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys

from sandbox.config import Settings
from sandbox.errors import ContainerError
from sandbox.runtime import lifecycle, monitor, tty
from sandbox.runtime.state import ContainerStore

DETACH_KEYS = b"\x10\x11"  # Ctrl-P Ctrl-Q
_CHUNK = 65536


def attach(settings: Settings, name_or_id: str, *, stdin: bool = True) -> int | None:
    """Relay until the container exits (its exit code) or the user detaches (None)."""
    store = ContainerStore(settings.containers_root)
    container = store.lookup_running(name_or_id)
    spec = store.load_spec(container.id)
    name, fd = monitor.short_path(monitor.attach_socket_path(store, container.id))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(name)
    except OSError as e:
        sock.close()
        raise ContainerError(
            f"cannot attach to {container.name}",
            context=e.strerror,
            hint="only containers started with -d (or start) can be attached",
        ) from e
    finally:
        os.close(fd)
    use_stdin = stdin and (spec.process.interactive or spec.process.terminal)
    raw = use_stdin and spec.process.terminal and os.isatty(0)
    with sock, tty.raw_mode(0) if raw else contextlib.nullcontext():
        detached = _relay(sock, 0 if use_stdin else None, detach_keys=raw)
    if detached:
        return None
    return lifecycle.wait(settings, container.id)


def _relay(sock: socket.socket, stdin: int | None, *, detach_keys: bool) -> bool:
    # Input goes out only as fast as the container takes it (the monitor stops reading us
    # meanwhile), so it waits in `pending` while output keeps being read and shown; stdin is
    # read again once pending is sent.
    buffer = b""
    previous = b""
    pending = bytearray()
    sock.setblocking(False)
    while True:
        readers: list[socket.socket | int] = [sock]
        if stdin is not None and not pending:
            readers.append(stdin)
        readable, _, _ = select.select(readers, [sock] if pending else [], [])
        if sock in readable:
            try:
                data = sock.recv(_CHUNK)
            except BlockingIOError:
                data = None
            except ConnectionError:  # closed with input of ours unread: the end all the same
                data = b""
            if data == b"":
                return False
            buffer += data or b""
            while len(buffer) >= 5:
                length = int.from_bytes(buffer[1:5], "big")
                if len(buffer) < 5 + length:
                    break
                out = sys.stdout.buffer if buffer[0] == 1 else sys.stderr.buffer
                out.write(buffer[5 : 5 + length])
                out.flush()
                buffer = buffer[5 + length :]
        if stdin is not None and stdin in readable:
            data = os.read(stdin, _CHUNK)
            if not data:
                stdin = None
                continue
            if detach_keys and DETACH_KEYS in previous[-1:] + data:
                return True
            previous = data
            pending += data
        if pending:
            try:
                del pending[: sock.send(pending)]
            except BlockingIOError:
                pass
            except ConnectionError:  # the monitor let go of us: its EOF is read next
                pending.clear()
