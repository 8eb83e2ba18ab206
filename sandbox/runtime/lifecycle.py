"""Container lifecycle verbs after creation: start, stop, kill, wait, restart, rename, prune, top.

Signals go straight to the container's PID 1 by host pid: the user owns the container's user
namespace, which gives it CAP_KILL over every process in it, whatever uid those run as. The
monitor (runtime/monitor.py) records how the container ended; these functions read the record.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
from pathlib import Path

from sandbox import spec as specs
from sandbox.config import Settings
from sandbox.errors import ContainerError, SandboxError, UsageError
from sandbox.runtime import container as engine
from sandbox.runtime import monitor, state
from sandbox.runtime.state import Container, ContainerStore

POLL = 0.05


def parse_signal(text: str | int) -> int:
    """SIGTERM, TERM, term, 15 -> 15."""
    if isinstance(text, int) or str(text).isdigit():
        number = int(text)
        if not 0 < number < signal.NSIG:
            raise UsageError(f"invalid signal {text}")
        return number
    name = str(text).upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise UsageError(
            f"invalid signal {text!r}", hint="use a name like TERM or a number"
        ) from None


def start(settings: Settings, name_or_id: str) -> Container:
    """Start a created or exited container under a new monitor (detached)."""
    store = ContainerStore(settings.containers_root)
    c = store.lookup(name_or_id)
    if c.status == "running":
        return c
    spec = store.load_spec(c.id)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(store.dir(c.id) / monitor.STOPPED)
    record = store.update(c, exit_code=None, finished_at=None)
    monitor.start(store, spec, record)
    return store.lookup(c.id)


def start_attached(settings: Settings, name_or_id: str) -> int:
    """`sandbox start -a`: run the container in the foreground, as `sandbox run` does."""
    store = ContainerStore(settings.containers_root)
    c = store.lookup(name_or_id)
    if c.status == "running":
        raise ContainerError(
            f"container {c.name} is already running", hint="'sandbox logs -f' follows its output"
        )
    spec = store.load_spec(c.id)
    record = store.update(c, exit_code=None, finished_at=None)
    try:
        return engine.start_and_wait(spec, store, record)
    finally:
        if record.remove:
            engine.remove_files(store, record, spec.mapping)


def kill(settings: Settings, name_or_id: str, sig: int = signal.SIGKILL) -> Container:
    store = ContainerStore(settings.containers_root)
    c = store.lookup_running(name_or_id)
    _signal(c, sig)
    return c


def _signal(c: Container, sig: int) -> None:
    if not state.is_alive(c):
        return
    try:
        os.kill(c.pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError as e:
        raise ContainerError(f"cannot signal container {c.name}", context=e.strerror) from e


def stop(settings: Settings, name_or_id: str, timeout: float | None = None) -> Container:
    """The image's StopSignal (or SIGTERM), then SIGKILL after timeout seconds (default 10).

    The restart policy does not bring a stopped container back.
    """
    store = ContainerStore(settings.containers_root)
    c = store.lookup(name_or_id)
    if c.status != "running":
        return c
    (store.dir(c.id) / monitor.STOPPED).touch()
    try:
        stop_signal = parse_signal(store.load_spec(c.id).stop_signal)
    except SandboxError:
        stop_signal = signal.SIGTERM
    _signal(c, stop_signal)
    deadline = time.monotonic() + (10 if timeout is None else timeout)
    while state.is_alive(c) and time.monotonic() < deadline:
        time.sleep(POLL)
    if state.is_alive(c):
        _signal(c, signal.SIGKILL)
    return wait_recorded(store, c)


def wait_recorded(store: ContainerStore, c: Container, timeout: float = 10) -> Container:
    """After PID 1 is gone: the record once the monitor wrote the exit code (bounded)."""
    while state.is_alive(c):
        time.sleep(POLL)
    deadline = time.monotonic() + timeout
    while True:
        try:
            current = store.lookup(c.id)
        except SandboxError:
            return dataclasses.replace(c, status="exited")
        monitor_alive = current.monitor_pid > 0 and state.pid_exists(current.monitor_pid)
        recorded = current.finished_at is not None and current.finished_at != c.finished_at
        if recorded or not monitor_alive or time.monotonic() > deadline:
            return current
        time.sleep(POLL)


def wait(settings: Settings, name_or_id: str) -> int | None:
    """Block until the container exits (and is not restarted); its exit code."""
    store = ContainerStore(settings.containers_root)
    c = store.lookup(name_or_id)
    while True:
        if c.status == "running":
            c = wait_recorded(store, c, timeout=3600 * 24 * 365)
        elif c.exit_code is None and c.monitor_pid > 0 and state.pid_exists(c.monitor_pid):
            # PID 1 gone and its monitor still writing the exit down: reads show "exited"
            # with no code yet. Bounded: that pid may belong to another process by now.
            c = wait_recorded(store, c, timeout=10)
        else:
            return c.exit_code
        if c.status != "running":  # else restarted by its policy: keep waiting
            return c.exit_code


def restart(settings: Settings, name_or_id: str, timeout: float | None = None) -> Container:
    stop(settings, name_or_id, timeout)
    return start(settings, name_or_id)


def rename(settings: Settings, name_or_id: str, new_name: str) -> Container:
    specs.validate_name(new_name)
    store = ContainerStore(settings.containers_root)
    return store.rename(store.lookup(name_or_id), new_name)


def remove_abandoned(settings: Settings, containers: list[Container]) -> list[Container]:
    """Remove the abandoned --rm containers (state.abandoned) among containers; the others,
    in order. podman's conmon removes such a container through its exit command; here the
    next `ps` does."""
    kept = []
    for c in containers:
        if state.abandoned(c):
            with contextlib.suppress(SandboxError):  # then it stays listed, as exited
                engine.remove(settings, c.id)
                continue
        kept.append(c)
    return kept


def prune(settings: Settings) -> list[Container]:
    """Remove every container that is not running, but for one whose network namespace a
    running container still joins (the newest come first, so stopped joiners go before)."""
    removed = []
    store = ContainerStore(settings.containers_root)
    for c in store.list():
        if c.status != "running" and not engine.dependents(store, c):
            engine.remove(settings, c.id)
            removed.append(c)
    return removed


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
    pid: int  # in the container's PID namespace
    host_pid: int
    ppid: int
    user: str
    state: str
    command: str


def top(settings: Settings, name_or_id: str) -> list[ProcessInfo]:
    """The container's processes: PID 1's descendants, plus processes in its PID namespace
    whose parent is outside (`sandbox exec` sessions). /proc/PID/status is readable even for
    non-dumpable processes (the --init reaper), /proc/PID/ns/pid is not, so both are used."""
    store = ContainerStore(settings.containers_root)
    c = store.lookup_running(name_or_id)
    statuses: dict[int, dict[str, str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                statuses[int(entry)] = _status(Path(f"/proc/{entry}/status"))
    children: dict[int, list[int]] = {}
    for pid, status in statuses.items():
        children.setdefault(int(status.get("PPid", "0")), []).append(pid)
    members = set()
    todo = [c.pid]
    while todo:
        pid = todo.pop()
        if pid in statuses and pid not in members:
            members.add(pid)
            todo.extend(children.get(pid, []))
    target = None
    for pid in sorted(members):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/ns/pid")
            break
    if target is not None:
        for pid in statuses:
            with contextlib.suppress(OSError):
                if pid not in members and os.readlink(f"/proc/{pid}/ns/pid") == target:
                    members.add(pid)
    found = []
    for pid in members:
        status = statuses[pid]
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            cmdline = b""
        parent = int(status.get("PPid", "0"))
        inner_parent = statuses[parent].get("NSpid", "0").split()[-1] if parent in members else "0"
        args = [a.decode(errors="replace") for a in cmdline.split(b"\0") if a]
        found.append(
            ProcessInfo(
                pid=int(status.get("NSpid", str(pid)).split()[-1]),
                host_pid=pid,
                ppid=int(inner_parent),
                user=status.get("Uid", "?").split()[0],
                state=status.get("State", "?").split()[0],
                command=" ".join(args) or f"[{status.get('Name', '?')}]",
            )
        )
    return sorted(found, key=lambda p: p.pid)


def _status(path: Path) -> dict[str, str]:
    fields = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def freeze(settings: Settings, name_or_id: str, frozen: bool) -> Container:
    """pause/unpause through the cgroup v2 freezer of the container's own cgroup."""
    store = ContainerStore(settings.containers_root)
    c = store.lookup_running(name_or_id)
    control = (
        Path("/sys/fs/cgroup") / c.cgroup_path.lstrip("/") / "cgroup.freeze"
        if c.cgroup_path
        else None
    )
    if control is None or not control.exists():
        raise ContainerError(
            f"cannot {'pause' if frozen else 'unpause'} {c.name}: it has no cgroup v2 freezer",
            context="the container runs without a cgroup of its own on this host",
            hint="pausing needs cgroup v2 delegated by the systemd user manager; "
            "see 'sandbox doctor'",
        )
    try:
        control.write_text("1" if frozen else "0")
    except OSError as e:
        raise ContainerError(f"cannot write {control}", context=e.strerror) from e
    return c
