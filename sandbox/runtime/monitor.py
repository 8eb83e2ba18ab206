"""The monitor of a detached container (conmon's role): one small process per container.

`sandbox run -d` and `sandbox start` fork it twice (so it is nobody's child and in a session
of its own, surviving the terminal closing), then wait on a pipe until it reports that the
command was exec'd, or why not. The monitor is the container's parent (a child subreaper): it
holds the container's stdio, writes the log, records the exit status, carries out the restart
policy and, with --rm, removes the container. It joins none of the container's namespaces, so
it never keeps them alive after PID 1 exits; PID 1 dies with it (PDEATHSIG), so a killed
monitor leaves no orphaned container behind.

Once the container runs, the monitor execve()s the small C program of sandbox/libexec (same
pid) to relay its output while it runs, and that execs back into this module (`finish`) for
the end: see Session. Without a C compiler the whole monitor stays in Python (Relay).
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
from typing import Any, NoReturn, TextIO

from sandbox import libexec
from sandbox import spec as specs
from sandbox.errors import ContainerError, SandboxError
from sandbox.rootless import userns
from sandbox.rootless.channel import error_from_message, error_to_message
from sandbox.rootless.idmap import IdMapping
from sandbox.runtime import container as engine
from sandbox.runtime import networks, parent
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
    diagnostics = _diagnostics(cdir)
    for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGPIPE):
        signal.signal(signum, signal.SIG_IGN)
    # Before the container starts: a first build takes a second, and its output would wait.
    program, why = libexec.monitor_program()
    if program is None:
        print(f"monitor: python ({why})", file=diagnostics)
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
    listener = _listen(cdir / ATTACH)
    # container.start records our pid as monitor_pid with PID 1's (one record write).
    if program is not None:
        session = Session(store, spec, record.id, program, stdin_w, listener, [])
        try:
            started = session.start(record)
        except SandboxError as error:
            os.write(report_w, json.dumps(error_to_message(error)).encode())
            session.end()
            if record.remove:
                with contextlib.suppress(SandboxError):
                    engine.remove_files(store, store.lookup(record.id), spec.mapping)
            return error.exit_code
        # Only the container may hold the write ends now, so its exit is our EOF.
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.write(report_w, b"started")
        os.close(report_w)
        session.exec_native(started, out_r, err_r, diagnostics.fileno())
    return _python_monitor(
        store, spec, record, report_w, diagnostics, null, (out_r, err_r), stdin_w, listener
    )


def _python_monitor(
    store: ContainerStore,
    spec: specs.ContainerSpec,
    record: Container,
    report_w: int,
    diagnostics: TextIO,
    null: int,
    pipes: tuple[int, int],
    stdin_w: int | None,
    listener: socket.socket | None,
) -> int:  # pragma: no cover - runs in the monitor
    """The whole monitor in Python: where there is no C compiler (see sandbox/libexec)."""
    cdir = store.dir(record.id)
    out_r, err_r = pipes
    writer = LogWriter(cdir / LOG)
    relay = Relay(writer, listener)
    relay.input_fd = stdin_w
    kind, retries = specs.parse_restart(spec.restart)
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
        time.sleep(_backoff(attempts))
    relay.close_clients()
    writer.close()
    with contextlib.suppress(OSError):
        os.unlink(cdir / ATTACH)
    if record.remove:
        with contextlib.suppress(SandboxError):
            engine.remove_files(store, store.lookup(record.id), spec.mapping)
    return code


def _backoff(attempts: int) -> float:
    return min(0.1 * 2.0**attempts, 5.0)


def _diagnostics(cdir: Path) -> TextIO:  # pragma: no cover - runs in the monitor
    diagnostics = open(cdir / MONITOR_LOG, "a", buffering=1)  # noqa: SIM115
    sys.stdout = sys.stderr = diagnostics
    return diagnostics


class Session:
    """The native monitor's life, in the Python halves that bracket it.

    One process (the monitor's pid) alternates: Python starts the container, then execve()s the
    C program (sandbox/libexec/monitor.c) with the fds it needs; that relays output until PID 1
    is gone and execve()s back into Python (`python -m sandbox.runtime.monitor finish STATE`,
    STATE being this object as JSON), which tears down, records the exit and, by the restart
    policy, starts again or ends (with --rm, removing the container). What survives a restart
    stays open across the execs: the container's stdin pipe, the attach listener and clients.
    """

    def __init__(
        self,
        store: ContainerStore,
        spec: specs.ContainerSpec,
        container_id: str,
        program: Path,
        stdin_w: int | None,
        listener: socket.socket | None,
        clients: list[int],
        attempts: int = 0,
    ) -> None:
        self.store = store
        self.spec = spec
        self.id = container_id
        self.program = program
        self.stdin_w = stdin_w
        self.listen_fd = listener.detach() if listener is not None else None
        self.clients = clients
        self.attempts = attempts

    def start(self, record: Container) -> engine.Started:
        """Start the container once (its failure is recorded and raised)."""
        forwarder = parent.SignalForwarder()
        with forwarder.installed():  # signals before the command runs are held back
            started = engine.start(self.spec, self.store, record, forwarder)
        # Signals held back while it started go to PID 1 now; the C monitor forwards the rest.
        forwarder.arm(started.pid1)
        return started

    def exec_native(
        self, started: engine.Started, out_r: int, err_r: int, diagnostics: int
    ) -> NoReturn:  # pragma: no cover - runs in the monitor
        """Become the C monitor (same pid, still PID 1's parent and a subreaper)."""
        argv = [str(self.program), "--pid1", str(started.pid1)]
        argv += ["--log", str(self.store.dir(self.id) / LOG)]
        keep: list[int] = []
        if started.master is not None:
            # With a terminal both streams are the pty; the pipes were never handed out.
            os.close(out_r)
            os.close(err_r)
            argv += ["--pty", str(started.master)]
            keep.append(started.master)
        else:
            argv += ["--out", str(out_r), "--err", str(err_r)]
            keep += [out_r, err_r]
        if self.stdin_w is not None:
            argv += ["--input", str(self.stdin_w)]
            keep.append(self.stdin_w)
        if self.listen_fd is not None:
            argv += ["--listen", str(self.listen_fd)]
            keep.append(self.listen_fd)
        for fd in self.clients:
            argv += ["--client", str(fd)]
            keep.append(fd)
        state: dict[str, Any] = {
            "store": str(self.store.root),
            "id": self.id,
            "attempts": self.attempts,
            "stdin": self.stdin_w,
            "listen": self.listen_fd,
            "helper": None,
            "attachment": None,
            "cgroup_holder": None,
        }
        helper = started.helper
        if helper is not None:
            # Its exit fd stays with the C monitor: if that is killed, slirp4netns quits too.
            state["helper"] = {
                "name": helper.name,
                "pid": helper.pid,
                "exit_fd": helper.exit_w,
                "files": [str(p) for p in helper.files],
            }
            if helper.exit_w is not None:
                keep.append(helper.exit_w)
            if helper.pid is not None:
                argv += ["--keep", str(helper.pid)]
        if started.attachment is not None:
            state["attachment"] = _attachment_state(started.attachment)
        holder = _cgroup_holder(self.id)
        if holder is not None:  # the systemd scope's holder process and its pipe
            state["cgroup_holder"] = list(holder)
            keep.append(holder[1])
            argv += ["--keep", str(holder[0])]
        argv += ["--", sys.executable, "-P", "-m", __spec__.name, "finish", json.dumps(state)]
        for fd in keep:
            os.set_inheritable(fd, True)
        sys.stdout.flush()
        os.dup2(diagnostics, 2)  # the C monitor's own diagnostics
        try:
            os.execv(argv[0], argv)
        except OSError as e:
            # The container runs already: relay here, in Python, and finish in this process.
            print(f"cannot exec {argv[0]}: {e}; relaying in Python", file=sys.stdout)
            streams = (
                {started.master: "stdout"}
                if started.master is not None
                else {out_r: "stdout", err_r: "stderr"}
            )
            status, clients = self._relay_here(started, streams)
            os._exit(finish([json.dumps(state), f"--status={status}", f"--clients={clients}"]))

    def _relay_here(
        self, started: engine.Started, streams: dict[int, str]
    ) -> tuple[int, str]:  # pragma: no cover - runs in the monitor
        """What the C monitor does, with Relay: PID 1's wait status and the clients' fds."""
        listener = socket.socket(fileno=self.listen_fd) if self.listen_fd is not None else None
        writer = LogWriter(self.store.dir(self.id) / LOG)
        relay = Relay(writer, listener)
        for fd in self.clients:
            client = socket.socket(fileno=fd)
            client.setblocking(False)
            relay.clients[client] = bytearray()
        relay.input_fd = started.master if started.master is not None else self.stdin_w
        relay.run(streams)
        for fd in streams:
            os.close(fd)
        writer.close()
        status = userns.wait_pid(started.pid1)
        fds = []
        for client, pending in list(relay.clients.items()):
            with contextlib.suppress(OSError):
                client.setblocking(True)
                client.sendall(pending)
                fds.append(client.detach())
        if listener is not None:
            listener.detach()  # the state names its fd: finish keeps or closes it
        return status, ",".join(map(str, fds))

    def end(self) -> None:
        """No restart: clients see the end of the stream, the attach socket goes."""
        for fd in self.clients:
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.listen_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.listen_fd)
        with contextlib.suppress(OSError):
            os.unlink(self.store.dir(self.id) / ATTACH)


def _cgroup_holder(container_id: str) -> tuple[int, int] | None:
    """The systemd manager keeps the scope alive with a holder process it releases later;
    across the execs that is done here (other managers hold nothing)."""
    manager = engine._managers.get(container_id)
    holders: dict[str, tuple[int, int]] = getattr(manager, "_holders", {})
    return holders.get(container_id)


def _attachment_state(att: networks.Attachment) -> dict[str, Any]:
    # What networks.detach reads; the holder's mapping and the spawn-time fds are not needed.
    return {
        "holder": [att.holder.pid, att.holder.start, att.holder.api, att.holder.slirp_pid],
        "network": att.network,
        "address": att.address,
        "prefix": att.prefix,
        "gateway": att.gateway,
        "bridge": att.bridge,
        "container_id": att.container_id,
        "hostfwd_ids": att.hostfwd_ids,
    }


def _attachment_from(data: dict[str, Any], mapping: IdMapping) -> networks.Attachment:
    pid, start, api, slirp_pid = data["holder"]
    return networks.Attachment(
        holder=networks.Holder(pid, start, api, slirp_pid, mapping),
        within=userns.Within(-1, mapping),  # (only spawn uses it)
        network=data["network"],
        address=data["address"],
        prefix=data["prefix"],
        gateway=data["gateway"],
        bridge=data["bridge"],
        container_id=data["container_id"],
        hostfwd_ids=list(data["hostfwd_ids"]),
    )


def finish(argv: list[str]) -> int:  # pragma: no cover - runs in the monitor
    """The Python half after the C monitor: PID 1 has exited (argv: STATE --status=N
    --clients=FD,... --reaped=PID,...)."""
    state = json.loads(argv[0])
    extra = dict(a[2:].split("=", 1) for a in argv[1:] if a.startswith("--") and "=" in a)
    status = int(extra.get("status", "0"))
    clients = [int(x) for x in extra.get("clients", "").split(",") if x]
    reaped = {int(x) for x in extra.get("reaped", "").split(",") if x}
    store = ContainerStore(Path(state["store"]))
    container_id = state["id"]
    cdir = store.dir(container_id)
    diagnostics = _diagnostics(cdir)
    for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGPIPE):
        signal.signal(signum, signal.SIG_IGN)
    spec = store.load_spec(container_id)
    record = store.lookup(container_id)
    if state["helper"] is not None:
        _stop_helper(state["helper"], reaped)
    attachment = None
    if state["attachment"] is not None:
        attachment = _attachment_from(state["attachment"], spec.mapping)
    cgroup = Path(record.cgroup_path) if record.cgroup_path else None
    started = engine.Started(record, 0, None, None, attachment, cgroup)
    try:
        code = engine.finish(store, started, status)
    finally:
        if state["cgroup_holder"] is not None:
            _release_holder(state["cgroup_holder"], reaped)
    listener = None
    if state["listen"] is not None:
        listener = socket.socket(fileno=state["listen"])
        listener.setblocking(False)
    session = Session(
        store, spec, container_id, Path(), state["stdin"], listener, clients, state["attempts"]
    )
    kind, retries = specs.parse_restart(spec.restart)
    program, why = libexec.monitor_program(build=False)
    while True:
        session.attempts += 1
        if (cdir / STOPPED).exists() or not _should_restart(kind, retries, code, session.attempts):
            break
        if program is None:  # the compiled program went away meanwhile: end here
            print(f"cannot restart under the native monitor: {why}", file=diagnostics)
            break
        session.program = program
        record = store.update(store.lookup(container_id), restart_count=session.attempts)
        # Fresh pipes for the next run: the old ones saw EOF.
        out_r, err_r = _repipe()
        time.sleep(_backoff(session.attempts))
        try:
            started = session.start(record)
        except SandboxError as error:
            print(f"container failed: {error}", file=diagnostics)
            code = error.exit_code
            os.close(out_r)
            os.close(err_r)
            continue
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.close(null)
        session.exec_native(started, out_r, err_r, diagnostics.fileno())
    session.end()
    if record.remove:
        with contextlib.suppress(SandboxError):
            engine.remove_files(store, store.lookup(container_id), spec.mapping)
    return code


def _stop_helper(helper: dict[str, Any], reaped: set[int]) -> None:  # pragma: no cover
    """network.Helper.stop for a helper this process inherited across the execs."""
    pid = helper["pid"]
    if helper["exit_fd"] is not None:
        with contextlib.suppress(OSError):
            os.close(helper["exit_fd"])  # slirp4netns's --exit-fd: it quits on EOF
    elif pid is not None and pid not in reaped:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if pid is not None and pid not in reaped:
        deadline = time.monotonic() + 5
        while True:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                break
            if done or time.monotonic() > deadline:
                if not done:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    userns.wait_pid(pid)
                break
            time.sleep(0.005)
    for path in helper["files"]:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _release_holder(holder: list[int], reaped: set[int]) -> None:  # pragma: no cover
    """cgroups.systemd's release, for the holder this process inherited across the execs."""
    pid, pipe = holder
    with contextlib.suppress(OSError):
        os.close(pipe)
    if pid not in reaped:
        userns.wait_pid(pid)


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
    attached clients' input to the container's stdin (or its terminal). Input the container
    has not taken yet waits here, and no client is read meanwhile (they wait in their sockets):
    a container that does not read its stdin never stalls the loop.

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
        self.input = bytearray()  # client input the container has not taken yet

    def run(self, streams: dict[int, str]) -> None:
        """Until every stream hangs up: the container and everything it started have exited.
        The caller closes the stream fds."""
        blocking = self.input_fd is None or os.get_blocking(self.input_fd)
        if self.input_fd is not None:
            os.set_blocking(self.input_fd, False)
        try:
            self._loop(dict(streams))
        finally:
            self.input.clear()  # for a container that has ended
            if self.input_fd is not None and self.input_fd not in streams:
                os.set_blocking(self.input_fd, blocking)  # kept across restarts

    def _loop(self, open_fds: dict[int, str]) -> None:
        while open_fds:
            readers: list[Any] = list(open_fds)
            if self.listener is not None:
                readers.append(self.listener)
            writers: list[Any] = [c for c, pending in self.clients.items() if pending]
            if self.input:
                writers.append(self.input_fd)
            else:
                readers += list(self.clients)
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
            for item in writable:
                if isinstance(item, socket.socket):
                    self._flush(item)
                else:
                    self._feed()

    def _output(self, fd: int, open_fds: dict[int, str]) -> None:
        try:
            data = os.read(fd, _CHUNK)
        except BlockingIOError:  # a pty master is also the (non-blocking) input
            return
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
            self.input += data
            self._feed()

    def _feed(self) -> None:
        """Write what the container's stdin takes now."""
        assert self.input_fd is not None
        try:
            written = os.write(self.input_fd, self.input)
        except BlockingIOError:
            return
        except OSError:  # a closed stdin is not our error: the input is dropped
            written = len(self.input)
        del self.input[:written]

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


if __name__ == "__main__":  # pragma: no cover - the native monitor's way back
    if sys.argv[1:2] != ["finish"]:
        sys.exit("usage: python -m sandbox.runtime.monitor finish STATE")
    try:
        code = finish(sys.argv[2:])
    except Exception:
        import traceback

        traceback.print_exc()  # into monitor.log: nobody else would see it
        code = 125
    sys.exit(code)
