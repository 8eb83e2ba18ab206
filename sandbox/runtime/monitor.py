"""The monitor of a detached container (conmon's role): one small process per container.

`sandbox run -d` and `sandbox start` fork it twice (so it is nobody's child and in a session
of its own, surviving the terminal closing), then wait on a pipe until it reports that the
command was exec'd, or why not. The monitor is the container's parent (a child subreaper): it
holds the container's stdio, writes the log, records the exit status, carries out the restart
policy and, with --rm, removes the container. It joins none of the container's namespaces, so
it never keeps them alive after PID 1 exits; PID 1 dies with it (PDEATHSIG), so a killed
monitor leaves no orphaned container behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from sandbox import spec as specs
from sandbox.errors import ContainerError, SandboxError
from sandbox.rootless import userns
from sandbox.rootless.channel import error_from_message, error_to_message
from sandbox.runtime import container as engine
from sandbox.runtime.logs import LogWriter
from sandbox.runtime.state import Container, ContainerStore

LOG = "ctr.log"
MONITOR_LOG = "monitor.log"
STOPPED = "stopped"  # present when the user stopped the container: no restart
ATTACH = "attach.sock"  # the monitor's socket for `sandbox attach`
_CHUNK = 65536


def log_path(store: ContainerStore, container_id: str) -> Path:
    return store.dir(container_id) / LOG


def start(store: ContainerStore, spec: specs.ContainerSpec, record: Container) -> None:
    """Start the container under a new monitor; return once its command runs."""
    report_r, report_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    first = os.fork()
    if first == 0:  # pragma: no cover - runs in the child
        code = 0
        try:
            os.close(report_r)
            os.setsid()
            if os.fork() == 0:
                code = _monitor(store, spec, record, report_w)
        except BaseException as error:
            with contextlib.suppress(OSError):
                os.write(report_w, json.dumps(error_to_message(error)).encode())
            code = 125
        finally:
            os._exit(code)
    os.close(report_w)
    userns.wait_pid(first)
    chunks = []
    while True:
        data = os.read(report_r, _CHUNK)
        if not data:
            break
        chunks.append(data)
    os.close(report_r)
    report = b"".join(chunks)
    if report == b"started":
        return
    if not report:
        raise ContainerError(
            f"the monitor of container {record.name} died while starting it",
            context=f"see {store.dir(record.id) / MONITOR_LOG}",
        )
    raise error_from_message(json.loads(report))


def _monitor(
    store: ContainerStore, spec: specs.ContainerSpec, record: Container, report_w: int
) -> int:  # pragma: no cover - runs in the monitor
    cdir = store.dir(record.id)
    # Our own diagnostics go to a file: stdout and stderr become the container's pipes.
    diagnostics = open(cdir / MONITOR_LOG, "a", buffering=1)  # noqa: SIM115
    sys.stdout = sys.stderr = diagnostics
    for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGPIPE):
        signal.signal(signum, signal.SIG_IGN)
    null = os.open(os.devnull, os.O_RDWR)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    stdin_w = None
    if spec.process.interactive and not spec.process.terminal:
        # Keep stdin open but silent, as podman does for -d -i (attach is not there yet).
        stdin_r, stdin_w = os.pipe()
        os.dup2(stdin_r, 0)
        os.close(stdin_r)
    else:
        os.dup2(null, 0)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    os.close(out_w)
    os.close(err_w)
    _close_other_fds(
        {0, 1, 2, null, out_r, err_r, report_w, diagnostics.fileno()}
        | ({stdin_w} if stdin_w is not None else set())
    )
    writer = LogWriter(cdir / LOG)
    relay = Relay(writer, _listen(cdir / ATTACH))
    relay.input_fd = stdin_w
    kind, retries = specs.parse_restart(spec.restart)
    record = store.update(record, monitor_pid=os.getpid())
    reported = False
    attempts = 0
    code = 0

    def on_started(_record: Container) -> None:
        nonlocal reported
        # Only the container may hold the write ends now, so its exit is our EOF.
        os.dup2(null, 1)
        os.dup2(null, 2)
        if not reported:
            os.write(report_w, b"started")
            os.close(report_w)
            reported = True

    def pump(_spec: specs.ContainerSpec, master: int | None) -> None:
        if master is not None:
            # With a terminal both streams are the pty; the pipes were never handed out.
            os.close(out_r)
            os.close(err_r)
            relay.input_fd = master
            relay.run({master: "stdout"})
        else:
            relay.run({out_r: "stdout", err_r: "stderr"})
            os.close(out_r)
            os.close(err_r)

    while True:
        try:
            code = engine.start_and_wait(spec, store, record, pump=pump, on_started=on_started)
        except SandboxError as error:
            if not reported:
                os.write(report_w, json.dumps(error_to_message(error)).encode())
                os.close(report_w)
                reported = True
            print(f"container failed: {error}", file=diagnostics)
            code = error.exit_code
        if not reported:
            break
        attempts += 1
        if (cdir / STOPPED).exists() or not _should_restart(kind, retries, code, attempts):
            break
        record = store.update(store.lookup(record.id), restart_count=attempts)
        # Fresh pipes for the next run: the old ones saw EOF.
        out_r, err_r = _repipe()
        time.sleep(min(0.1 * 2**attempts, 5))
    relay.close_clients()
    writer.close()
    with contextlib.suppress(OSError):
        os.unlink(cdir / ATTACH)
    if record.remove:
        with contextlib.suppress(SandboxError):
            engine.remove_files(store, store.lookup(record.id), spec.mapping)
    return code


def _should_restart(kind: str, retries: int, code: int, attempts: int) -> bool:
    if kind in ("always", "unless-stopped"):
        return True
    if kind == "on-failure" and code != 0:
        return retries == 0 or attempts <= retries
    return False


def _repipe() -> tuple[int, int]:  # pragma: no cover - runs in the monitor
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    os.close(out_w)
    os.close(err_w)
    return out_r, err_r


class Relay:
    """The monitor's I/O loop: container output to the log and to attached clients, and
    attached clients' input to the container's stdin (or its terminal).

    Frames to a client: one byte for the stream (1 stdout, 2 stderr), four bytes of length
    (big-endian), the data. What a client sends is raw input. A client that falls behind is
    dropped rather than allowed to stall the container (its output is in the log anyway).
    """

    MAX_BEHIND = 4 * 1024 * 1024

    def __init__(self, writer: LogWriter, listener: socket.socket | None):
        self.writer = writer
        self.listener = listener
        self.clients: dict[socket.socket, bytearray] = {}
        self.input_fd: int | None = None

    def run(self, streams: dict[int, str]) -> None:
        """Until every stream hangs up: the container and everything it started have exited.
        The caller closes the stream fds."""
        open_fds = dict(streams)
        while open_fds:
            readers: list[Any] = list(open_fds)
            if self.listener is not None:
                readers.append(self.listener)
            readers += list(self.clients)
            writers = [c for c, pending in self.clients.items() if pending]
            try:
                readable, writable, _ = select.select(readers, writers, [])
            except InterruptedError:
                continue
            for item in readable:
                if item is self.listener:
                    self._accept()
                elif isinstance(item, socket.socket):
                    self._client_input(item)
                else:
                    self._output(item, open_fds)
            for client in writable:
                self._flush(client)

    def _output(self, fd: int, open_fds: dict[int, str]) -> None:
        try:
            data = os.read(fd, _CHUNK)
        except OSError:  # EIO from a pty master when the last slave closes
            data = b""
        stream = open_fds[fd]
        if not data:
            self.writer.flush(open_fds.pop(fd))
            return
        self.writer.write(stream, data)
        frame = (b"\x01" if stream == "stdout" else b"\x02") + len(data).to_bytes(4, "big")
        for client, pending in list(self.clients.items()):
            pending += frame + data
            if len(pending) > self.MAX_BEHIND:
                self._drop(client)

    def _accept(self) -> None:
        assert self.listener is not None
        try:
            client, _ = self.listener.accept()
        except OSError:
            return
        client.setblocking(False)
        self.clients[client] = bytearray()

    def _client_input(self, client: socket.socket) -> None:
        try:
            data = client.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        if self.input_fd is not None:
            with contextlib.suppress(OSError):
                _write_all(self.input_fd, data)

    def _flush(self, client: socket.socket) -> None:
        pending = self.clients.get(client)
        if not pending:
            return
        try:
            sent = client.send(pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        del pending[:sent]

    def _drop(self, client: socket.socket) -> None:
        self.clients.pop(client, None)
        client.close()

    def close_clients(self) -> None:
        for client, pending in list(self.clients.items()):
            with contextlib.suppress(OSError):
                client.setblocking(True)
                client.sendall(pending)
            self._drop(client)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def attach_socket_path(store: ContainerStore, container_id: str) -> Path:
    return store.dir(container_id) / ATTACH


def short_path(path: Path) -> tuple[str, int]:
    """A name for path that fits sun_path (108 bytes) however deep path is: through an fd of
    its directory. The caller closes the fd."""
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    return f"/proc/self/fd/{fd}/{path.name}", fd


def _listen(path: Path) -> socket.socket | None:  # pragma: no cover - runs in the monitor
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    name, fd = short_path(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(name)
        os.chmod(path, 0o600)
        listener.listen(8)
    except OSError as e:
        print(f"attach socket unavailable: {e}", file=sys.stderr)
        listener.close()
        return None
    finally:
        os.close(fd)
    listener.setblocking(False)
    return listener


def _close_other_fds(keep: set[int]) -> None:
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)
