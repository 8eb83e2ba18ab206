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
import sys
import time
from pathlib import Path

from sandbox import spec as specs
from sandbox.errors import ContainerError, SandboxError
from sandbox.rootless.channel import error_from_message, error_to_message
from sandbox.runtime import container as engine
from sandbox.runtime.logs import LogWriter
from sandbox.runtime.state import Container, ContainerStore

LOG = "ctr.log"
MONITOR_LOG = "monitor.log"
STOPPED = "stopped"  # present when the user stopped the container: no restart
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
    engine.wait_pid(first)
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
            _copy_to_log({master: "stdout"}, writer)
        else:
            _copy_to_log({out_r: "stdout", err_r: "stderr"}, writer)
            os.close(out_r)
            os.close(err_r)

    while True:
        try:
            code = engine._start_and_wait(spec, store, record, pump=pump, on_started=on_started)
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
    writer.close()
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


def _copy_to_log(streams: dict[int, str], writer: LogWriter) -> None:
    """Until every stream hangs up: the container and everything it started have exited.
    The caller closes the fds."""
    open_fds = dict(streams)
    while open_fds:
        try:
            readable, _, _ = select.select(list(open_fds), [], [])
        except InterruptedError:
            continue
        for fd in readable:
            try:
                data = os.read(fd, _CHUNK)
            except OSError:  # EIO from a pty master when the last slave closes
                data = b""
            if data:
                writer.write(open_fds[fd], data)
            else:
                writer.flush(open_fds.pop(fd))


def _close_other_fds(keep: set[int]) -> None:
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)
