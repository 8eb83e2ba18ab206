"""The monitor of a detached container, as an unprivileged user: the small C program that relays
output once the container runs (sandbox/libexec/monitor.c), and the Python monitor that stands in
for it without a C compiler (forced here with SANDBOX_MONITOR=python). Both must write the same
k8s-file log, serve `sandbox attach`, restart by policy, honour --rm and record the exit."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sandbox.runtime import logs
from tests import helpers
from tests.helpers import SandboxEnv, ok, run_detached, until

pytestmark = pytest.mark.needs("userns", "subids", "newuidmap")

Run = Callable[..., subprocess.CompletedProcess[str]]

MONITORS = [pytest.param("native", marks=pytest.mark.needs("native_monitor")), "python"]
STAMP = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")
LONG = 40000  # more than two MAX_PARTIAL records in one line


def _dir(env: SandboxEnv, container_id: str) -> Path:
    return env.data_home / "sandbox" / "containers" / container_id


def _record(env: SandboxEnv, container_id: str) -> dict[str, object]:
    return dict(json.loads((_dir(env, container_id) / "container.json").read_text()))


def _pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise AssertionError(f"no Pss in /proc/{pid}/smaps_rollup")


@pytest.fixture(params=MONITORS)
def monitor(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def run(sandbox_env: SandboxEnv, monitor: str) -> Run:
    """`sandbox` with the monitor under test (run -d passes its environment to the monitor)."""
    extra = {"SANDBOX_MONITOR": monitor}

    def run(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return sandbox_env.run(*args, env=extra, **kwargs)  # type: ignore[arg-type]

    return run


def _attach(
    env: SandboxEnv, name: str, extra: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`sandbox attach NAME` with every stream a pipe of ours."""
    return subprocess.Popen(
        [*env.argv_prefix(), "attach", name],
        env={**env.env, **(extra or {})},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _expected_exe(env: SandboxEnv, monitor: str, pid: int) -> None:
    """The monitor runs the compiled program (it execs it right after reporting "started")."""
    cache = env.home / ".cache" / "sandbox" / "libexec"

    def native() -> bool:
        exe = Path(os.readlink(f"/proc/{pid}/exe"))
        return exe.parent == cache and exe.name.startswith("sandbox-monitor-")

    if monitor == "native":
        until(native, "the monitor to exec the compiled program")
    else:
        time.sleep(0.2)
        assert "python" in os.readlink(f"/proc/{pid}/exe")


@pytest.mark.needs("native_monitor")
def test_idle_native_monitor_is_small(sandbox_env: SandboxEnv, busybox_image: str) -> None:
    run = sandbox_env.run
    container_id = run_detached(run, "idle", busybox_image, "sleep", "1000")
    record = _record(sandbox_env, container_id)
    monitor_pid, pid1 = int(str(record["monitor_pid"])), int(str(record["pid"]))
    _expected_exe(sandbox_env, "native", monitor_pid)
    # Still PID 1's parent (the exec kept the pid), and small.
    status = Path(f"/proc/{pid1}/status").read_text()
    assert f"\nPPid:\t{monitor_pid}\n" in status
    pss = _pss_kib(monitor_pid)
    assert pss < 2048, f"the idle monitor's PSS is {pss} KiB"
    # doctor names the program in use.
    doctor = ok(run("doctor"))
    assert "native monitor" in doctor and os.readlink(f"/proc/{monitor_pid}/exe") in doctor
    ok(run("stop", "-t", "1", "idle"))
    assert _record(sandbox_env, container_id)["status"] == "exited"
    ok(run("rm", "idle"))


def test_logs_and_attach_round_trip(
    sandbox_env: SandboxEnv, run: Run, monitor: str, busybox_image: str
) -> None:
    name = f"relay-{monitor}"
    script = (
        "read line; echo got=$line; echo err=$line >&2; "
        f"head -c {LONG} /dev/zero | tr '\\0' x; echo; printf tail; exit 3"
    )
    container_id = run_detached(run, name, "-i", busybox_image, "sh", "-c", script)
    record = _record(sandbox_env, container_id)
    _expected_exe(sandbox_env, monitor, int(str(record["monitor_pid"])))
    attacher = _attach(sandbox_env, name, {"SANDBOX_MONITOR": monitor})
    time.sleep(1)  # let it connect before the input arrives
    out, err = attacher.communicate(b"hello\n", timeout=60)
    assert attacher.returncode == 3, err
    assert out == b"got=hello\n" + b"x" * LONG + b"\ntail"
    assert err == b"err=hello\n"

    # The log: the same records as logs.LogWriter writes, whichever monitor wrote them.
    raw = (_dir(sandbox_env, container_id) / "ctr.log").read_bytes()
    records = [line.split(b" ", 3) for line in raw.split(b"\n")[:-1]]
    for stamp, stream, tag, text in records:
        assert STAMP.match(stamp), stamp
        assert stream in (b"stdout", b"stderr") and tag in (b"F", b"P")
        assert len(text) <= logs.MAX_PARTIAL
    mine = [(s, t, x) for _, s, t, x in records]
    assert (b"stdout", b"F", b"got=hello") in mine and (b"stderr", b"F", b"err=hello") in mine
    long_records = [(t, x) for s, t, x in mine if s == b"stdout" and x.startswith(b"x")]
    assert b"".join(x for _, x in long_records) == b"x" * LONG
    assert [t for t, _ in long_records][-1] == b"F" and {t for t, _ in long_records[:-1]} == {b"P"}
    assert mine[-1] == (b"stdout", b"P", b"tail")  # output that stopped without a newline
    shown = ok(run("logs", name))
    assert shown.startswith("got=hello\n") and shown.endswith("tail")
    assert _record(sandbox_env, container_id)["exit_code"] == 3
    ok(run("rm", name))


def test_input_the_container_does_not_read_never_stalls_it(
    sandbox_env: SandboxEnv, run: Run, monitor: str, busybox_image: str
) -> None:
    # A megabyte of input for a container that never reads its stdin (a pipe holds 64 KiB):
    # the monitor keeps what does not fit and goes on relaying and logging the output, and
    # the end is recorded (a blocking write used to hang the monitor for good).
    name = f"deaf-{monitor}"
    script = "for i in $(seq 40); do echo tick-$i; sleep 0.05; done"
    container_id = run_detached(run, name, "-i", busybox_image, "sh", "-c", script)
    attacher = _attach(sandbox_env, name, {"SANDBOX_MONITOR": monitor})
    out, err = attacher.communicate(b"x" * (1 << 20), timeout=60)
    ticks = [f"tick-{i}" for i in range(1, 41)]
    assert out.decode().split()[-1] == "tick-40", err
    assert attacher.returncode == 0, err
    until(lambda: _record(sandbox_env, container_id)["status"] == "exited", "the exit record")
    assert ok(run("logs", name)).split() == ticks
    ok(run("rm", name))


def test_restart_on_failure_runs_three_times(
    sandbox_env: SandboxEnv, run: Run, monitor: str, busybox_image: str
) -> None:
    name = f"flaky-{monitor}"
    container_id = run_detached(
        run,
        name,
        "--restart",
        "on-failure:2",
        busybox_image,
        "sh",
        "-c",
        "echo attempt; sleep 0.2; exit 4",
    )
    monitor_pid = int(str(_record(sandbox_env, container_id)["monitor_pid"]))
    until(lambda: ok(run("logs", name)).count("attempt") == 3, "three attempts")
    assert ok(run("wait", name)).strip() == "4"
    time.sleep(0.5)
    record = _record(sandbox_env, container_id)
    assert ok(run("logs", name)).count("attempt") == 3
    assert record["restart_count"] == 2 and record["exit_code"] == 4
    # One monitor process all along: the native one execs back and forth, keeping its pid.
    assert record["monitor_pid"] == monitor_pid
    until(lambda: not os.path.exists(f"/proc/{monitor_pid}"), "the monitor to end")
    ok(run("rm", name))


def test_rm_removes_the_container_after_its_exit(
    sandbox_env: SandboxEnv, run: Run, busybox_image: str
) -> None:
    container_id = ok(
        run("run", "-d", "--rm", "--network", "none", busybox_image, "sh", "-c", "sleep 0.5")
    ).strip()
    assert _dir(sandbox_env, container_id).exists()
    until(lambda: not _dir(sandbox_env, container_id).exists(), "the container to go")
    ps = json.loads(ok(run("ps", "-a", "--format", "json")))
    assert container_id not in [c["Id"] for c in ps]


def test_exit_by_signal_and_oom_are_recorded(
    sandbox_env: SandboxEnv, run: Run, monitor: str, busybox_image: str
) -> None:
    name = f"killed-{monitor}"
    container_id = run_detached(run, name, busybox_image, "sleep", "1000")
    ok(run("kill", name))
    assert ok(run("wait", name)).strip() == "137"
    record = _record(sandbox_env, container_id)
    assert record["status"] == "exited" and record["exit_code"] == 137
    assert record["oom_killed"] is False  # not the OOM killer (this host enforces no limits)
    assert not (_dir(sandbox_env, container_id) / "attach.sock").exists()
    ok(run("rm", name))


@pytest.mark.needs("slirp4netns", "tun")
def test_killed_native_monitor_takes_pid1_and_the_network_helper(
    sandbox_env: SandboxEnv, run: Run, monitor: str, busybox_image: str
) -> None:
    name = f"orphan-{monitor}"
    container_id = ok(
        run("run", "-d", "--network", "slirp4netns", "--name", name, busybox_image, "sleep", "1000")
    ).strip()
    record = _record(sandbox_env, container_id)
    monitor_pid, pid1 = int(str(record["monitor_pid"])), int(str(record["pid"]))
    helpers = [
        int(p)
        for p in Path(f"/proc/{monitor_pid}/task/{monitor_pid}/children").read_text().split()
        if Path(f"/proc/{p}/comm").read_text().strip() == "slirp4netns"
    ]
    assert len(helpers) == 1
    os.kill(monitor_pid, signal.SIGKILL)
    until(lambda: not os.path.exists(f"/proc/{pid1}"), "PID 1 to die with its monitor")
    # slirp4netns quits when its exit fd's last holder (the monitor) is gone.
    until(lambda: not os.path.exists(f"/proc/{helpers[0]}"), "slirp4netns to quit")
    ok(run("rm", "-f", name))


# ---------------------------------------------------------------------------------------------
# the C program driven directly: hostile output, chunking, slow clients (no container needed)


@pytest.fixture(scope="session")
def native_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sandbox import libexec

    helpers.needs("native_monitor")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        program, why = libexec.monitor_program()
    assert program is not None, why
    return program


def _drive(
    program: Path, tmp: Path, writes: list[tuple[int, bytes]], *, code: int = 3, read: bool = True
) -> tuple[bytes, dict[str, str], bytes]:
    """Run the C monitor over a child (its "PID 1") that writes `writes` ((1|2, data), ...) and
    exits with code; the log, the finish arguments it execs with, and what a client got."""
    log, result = tmp / "ctr.log", tmp / "finish.txt"
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    gate_r, gate_w = os.pipe()
    ours, theirs = socket.socketpair()
    first = os.fork()
    if first == 0:  # pragma: no cover - the monitor-to-be
        try:
            pid1 = os.fork()
            if pid1 == 0:
                os.read(gate_r, 1)
                for stream, data in writes:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(out_w if stream == 1 else err_w, view) :]
                os._exit(code)
            for fd in (out_w, err_w, gate_r, gate_w, ours.fileno()):
                os.close(fd)
            for fd in (out_r, err_r, theirs.fileno()):
                os.set_inheritable(fd, True)
            finish = ["/bin/sh", "-c", f'printf "%s\\n" "$@" > {result}', "sh"]
            argv = [str(program), "--pid1", str(pid1), "--log", str(log)]
            argv += ["--out", str(out_r), "--err", str(err_r), "--client", str(theirs.fileno())]
            os.execv(argv[0], [*argv, "--", *finish])
        finally:
            os._exit(127)
    for fd in (out_r, out_w, err_r, err_w, gate_r):
        os.close(fd)
    theirs.close()
    received = bytearray()
    os.write(gate_w, b"x")
    os.close(gate_w)
    if read:
        while chunk := ours.recv(1 << 16):
            received += chunk
    assert os.waitpid(first, 0)[1] == 0
    ours.close()
    args = dict(a[2:].split("=", 1) for a in result.read_text().split())
    return log.read_bytes(), args, bytes(received)


def _frames(data: bytes) -> dict[int, bytes]:
    streams = {1: b"", 2: b""}
    while data:
        length = int.from_bytes(data[1:5], "big")
        assert len(data) >= 5 + length
        streams[data[0]] += data[5 : 5 + length]
        data = data[5 + length :]
    return streams


def _lines(path: Path) -> dict[str, list[tuple[bytes, bool]]]:
    lines, offset = logs.read_lines(path)
    found: dict[str, list[tuple[bytes, bool]]] = {"stdout": [], "stderr": []}
    for line in [*lines, *logs.trailing_partials(path, offset)]:
        found[line.stream].append((line.text, line.complete))
    return found


HOSTILE = [
    (1, b"%s%n%x %p\n"),
    (2, b"\x00\xff\xfe not utf-8 \r\n"),
    (1, b"x" * logs.MAX_PARTIAL + b"\n"),  # exactly one record's worth
    (1, b"y" * (logs.MAX_PARTIAL * 3 + 5)),
    (1, b"\n\n"),
    (2, b"z" * 100_000 + b"\nshort\n"),
    (1, b"no newline at the end"),
]


def test_native_log_and_frames_match_the_python_writer(
    native_program: Path, tmp_path: Path
) -> None:
    raw, args, received = _drive(native_program, tmp_path, HOSTILE)
    assert args["status"] == str(3 << 8) and args["clients"] and args["reaped"] == ""
    for record in raw.split(b"\n")[:-1]:
        stamp, stream, tag, text = record.split(b" ", 3)
        assert STAMP.match(stamp) and stream in (b"stdout", b"stderr") and tag in (b"F", b"P")
        assert len(text) <= logs.MAX_PARTIAL
    reference = logs.LogWriter(tmp_path / "reference.log")
    for stream, data in HOSTILE:
        reference.write("stdout" if stream == 1 else "stderr", data)
    reference.close()
    assert _lines(tmp_path / "ctr.log") == _lines(tmp_path / "reference.log")
    streams = _frames(received)
    for number in (1, 2):
        assert streams[number] == b"".join(d for s, d in HOSTILE if s == number)


def test_native_monitor_drops_a_client_that_does_not_read(
    native_program: Path, tmp_path: Path
) -> None:
    big = b"0123456789abcde\n" * (6 * 1024 * 1024 // 16)  # 6 MiB: more than 4 MiB behind
    raw, args, _ = _drive(native_program, tmp_path, [(1, big)], code=0, read=False)
    assert args["status"] == "0"
    assert args["clients"] == ""  # dropped, not waited for
    assert raw.count(b" stdout F 0123456789abcde\n") == len(big) // 16


def test_attach_stays_connected_across_restarts(
    sandbox_env: SandboxEnv, run: Run, monitor: str, busybox_image: str
) -> None:
    name = f"reattached-{monitor}"
    container_id = run_detached(
        run,
        name,
        "-i",
        "--restart",
        "on-failure:1",
        busybox_image,
        "sh",
        "-c",
        "read line; echo out=$line; exit 2",
    )
    _expected_exe(sandbox_env, monitor, int(str(_record(sandbox_env, container_id)["monitor_pid"])))
    attacher = _attach(sandbox_env, name, {"SANDBOX_MONITOR": monitor})
    # Each run reads one line of the same stdin (the monitor keeps that pipe too).
    out, err = attacher.communicate(b"first\nsecond\n", timeout=60)
    # One connection sees both runs (the monitor keeps it across the restart), then the end.
    assert out == b"out=first\nout=second\n", err
    assert attacher.returncode == 2
    assert _record(sandbox_env, container_id)["restart_count"] == 1
    ok(run("rm", name))


def test_the_build_and_every_reason_for_the_python_monitor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sandbox import libexec

    helpers.needs("native_monitor")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(libexec.ENV, raising=False)
    assert libexec.monitor_program(build=False)[0] is None  # not built yet
    program, why = libexec.monitor_program()
    assert program is not None and program.parent == tmp_path / "cache" / "sandbox" / "libexec"
    assert libexec.monitor_program(build=False) == (program, why)  # no second build
    assert not [p for p in program.parent.iterdir() if p.name.startswith(".")]  # no temp left
    # A cache the user cannot execute from (noexec): the Python monitor, and why.
    program.chmod(0o644)
    none, why = libexec.monitor_program()
    assert none is None and "cannot execute" in why
    program.chmod(0o755)
    monkeypatch.setenv(libexec.ENV, "python")
    assert libexec.monitor_program() == (None, f"{libexec.ENV}=python is set")
    monkeypatch.delenv(libexec.ENV)
    # No compiler: say so (doctor tells how to get one).
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert libexec.monitor_program() == (None, "no C compiler ('cc') on PATH")
    # A compiler that fails: remembered, not retried on every start.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "cc").write_text("#!/bin/sh\necho 'cc: broken' >&2\nexit 1\n")
    (fake / "cc").chmod(0o755)
    monkeypatch.setenv("PATH", str(fake))
    none, why = libexec.monitor_program()
    assert none is None and "could not build" in why
    failed = next(program.parent.glob("*.failed"))
    assert "cc: broken" in failed.read_text()
    assert "failed before" in libexec.monitor_program()[1]


def test_a_monitor_program_that_cannot_exec_falls_back_to_python(
    fresh_sandbox_env: SandboxEnv, busybox_tarball: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The container runs before the exec: when that fails, the same process relays in Python
    and finishes (restart, attach, exit code) instead of losing the container."""
    from sandbox import libexec

    helpers.needs("native_monitor")
    env = fresh_sandbox_env
    monkeypatch.setenv("XDG_CACHE_HOME", str(env.home / ".cache"))
    program, why = libexec.monitor_program()
    assert program is not None, why
    program.write_bytes(b"\x7fELF but not really")  # ours, executable, and ENOEXEC
    ok(env.run("image", "import", busybox_tarball, "bb"))
    container_id = run_detached(
        env.run,
        "fallback",
        "-i",
        "--restart",
        "on-failure:1",
        "bb",
        "sh",
        "-c",
        "read line; echo out=$line; exit 2",
    )
    attacher = _attach(env, "fallback")
    out, err = attacher.communicate(b"first\nsecond\n", timeout=60)
    assert out == b"out=first\nout=second\n", err
    assert attacher.returncode == 2
    record = _record(env, container_id)
    assert record["restart_count"] == 1 and record["exit_code"] == 2
    log = (_dir(env, container_id) / "monitor.log").read_text()
    assert log.count("relaying in Python") == 2, log
    assert ok(env.run("logs", "fallback")) == "out=first\nout=second\n"
    ok(env.run("rm", "fallback"))
