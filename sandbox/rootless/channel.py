"""Typed messages between a parent and its namespaced child over a socketpair.

SOCK_SEQPACKET keeps message boundaries, so a message is one JSON object (with a "type" key)
plus, optionally, file descriptors passed with SCM_RIGHTS. A child reports a failure with an
"error" message carrying a SandboxError's message/context/hint, which the parent re-raises, so
errors from inside a namespace read exactly like errors from the parent.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import socket
from typing import Any

from sandbox.errors import SandboxError

_MAX_MESSAGE = 65536
_MAX_FDS = 16


class ChannelClosed(Exception):
    """The other end closed the channel (exited, or exec'd with the socket close-on-exec)."""


class Channel:
    def __init__(self, sock: socket.socket):
        self.sock = sock

    @classmethod
    def pair(cls) -> tuple[Channel, Channel]:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        return cls(a), cls(b)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def send(self, kind: str, fds: list[int] | None = None, **fields: Any) -> None:
        data = json.dumps({"type": kind, **fields}).encode()
        if fds:
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
            self.sock.sendmsg([data], ancillary)
        else:
            self.sock.sendall(data)

    def recv(self) -> tuple[dict[str, Any], list[int]]:
        """The next message and any descriptors that came with it; raises ChannelClosed at EOF."""
        fds = array.array("i")
        data, ancdata, _flags, _addr = self.sock.recvmsg(
            _MAX_MESSAGE, socket.CMSG_SPACE(_MAX_FDS * fds.itemsize)
        )
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
        if not data:
            for fd in fds:
                os.close(fd)
            raise ChannelClosed()
        message = json.loads(data)
        if message.get("type") == "error":
            for fd in fds:
                os.close(fd)
            raise error_from_message(message)
        return message, list(fds)

    def expect(self, kind: str) -> tuple[dict[str, Any], list[int]]:
        """The next message, which must be of type kind."""
        message, fds = self.recv()
        if message["type"] != kind:
            for fd in fds:
                os.close(fd)
            raise SandboxError(
                "internal protocol error", context=f"expected {kind!r}, got {message['type']!r}"
            )
        return message, fds

    def send_error(self, error: BaseException) -> None:
        """Report a failure to the other side; never raises (the other side may be gone)."""
        with contextlib.suppress(OSError):
            self.send("error", **error_to_message(error))


def error_to_message(error: BaseException) -> dict[str, Any]:
    if isinstance(error, SandboxError):
        return {
            "message": error.message,
            "context": error.context,
            "hint": error.hint,
            "exit_code": int(error.exit_code),
            "class": type(error).__name__,
        }
    if isinstance(error, OSError):
        text = error.strerror or str(error)
        return {
            "message": f"{error.filename}: {text}" if error.filename else text,
            "context": None,
            "hint": None,
            "exit_code": 125,
            "class": "SandboxError",
        }
    return {
        "message": f"{type(error).__name__}: {error}",
        "context": None,
        "hint": None,
        "exit_code": 125,
        "class": "SandboxError",
    }


def error_from_message(message: dict[str, Any]) -> SandboxError:
    from sandbox import errors

    cls = getattr(errors, str(message.get("class", "SandboxError")), SandboxError)
    if not (isinstance(cls, type) and issubclass(cls, SandboxError)) or cls is errors.ExecError:
        cls = SandboxError
    error = cls(
        str(message.get("message")), context=message.get("context"), hint=message.get("hint")
    )
    error.exit_code = int(message.get("exit_code", 125))
    return error
