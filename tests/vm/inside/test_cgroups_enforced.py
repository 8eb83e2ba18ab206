"""Run inside the systemd VM (tests/vm/inside.sh), as a user whose systemd manager has cgroup
v2 controllers delegated: the limits are enforced there. The host collects the results
(tests/vm/test_cgroups_vm.py); on a host without delegation these tests skip (or fail in CI)."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from sandbox.rootless import cgroups

pytestmark = pytest.mark.needs("userns", "newuidmap", "busybox", "cgroup2")


@pytest.fixture(autouse=True)
def _systemd_manager() -> None:
    manager = cgroups.select()
    if manager.name != "systemd":
        pytest.fail(f"no systemd cgroup manager here: {getattr(manager, 'reason', '')}")


def _scopes() -> str:
    return subprocess.run(
        ["systemctl", "--user", "list-units", "--all", "--plain", "--no-legend", "sandbox-*"],
        capture_output=True,
        text=True,
    ).stdout


def test_cgroup_namespace_root(sandbox, busybox_image):
    done = sandbox("run", "--rm", busybox_image, "cat", "/proc/self/cgroup")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "0::/\n"


def test_sys_fs_cgroup_shows_only_the_container(sandbox, busybox_image):
    done = sandbox(
        "run",
        "--rm",
        "--memory",
        "64m",
        busybox_image,
        "sh",
        "-c",
        "cat /sys/fs/cgroup/memory.max; ls /sys/fs/cgroup | grep -c slice; "
        "echo 1 > /sys/fs/cgroup/memory.max && echo writable",
    )
    assert done.stdout.splitlines()[:2] == [str(64 << 20), "0"], done.stderr
    assert "writable" not in done.stdout


def test_memory_limit_oom_kills_with_137(sandbox, busybox_image):
    # The shell is PID 1 and the biggest process: the OOM killer picks it.
    done = sandbox(
        "run",
        "--name",
        "oom",
        "--memory",
        "64m",
        "--memory-swap",
        "64m",
        busybox_image,
        "sh",
        "-c",
        'x=$(head -c 209715200 /dev/zero | tr "\\0" a); echo survived',
    )
    assert done.returncode == 137, (done.stdout, done.stderr)
    raw = sandbox("ps", "-a", "--format", "json").stdout
    oom = [c for c in json.loads(raw) if "oom" in c["Names"]]
    assert oom and oom[0]["OOMKilled"] is True, raw
    sandbox("rm", "oom")


def test_pids_limit_stops_a_fork_loop(sandbox, busybox_image):
    # The inner shell forks until the kernel refuses (ash then exits); its sleeps stay. Only
    # shell builtins afterwards: at the limit, one more fork would fail.
    script = (
        'sh -c "while :; do sleep 60 & done" 2>/dev/null; '
        "read n < /sys/fs/cgroup/pids.current; echo current $n; "
        "while read k v; do echo $k $v; done < /sys/fs/cgroup/pids.events; "
        "read m < /sys/fs/cgroup/pids.max; echo limit $m"
    )
    done = sandbox("run", "--rm", "--pids-limit", "20", busybox_image, "sh", "-c", script)
    values = dict(line.split() for line in done.stdout.splitlines())
    assert values.get("limit") == "20", (done.stdout, done.stderr)
    assert int(values.get("max", "0")) > 0, "no fork was refused"
    # At the peak: PID 1, the inner shell and 18 sleeps; the inner shell has exited since.
    assert int(values["current"]) == 19, done.stdout


def test_cpus_holds_a_busy_loop_near_half_a_cpu(sandbox, busybox_image):
    script = (
        "(while :; do :; done) & read a < /sys/fs/cgroup/cpu.stat; sleep 5; "
        "read b < /sys/fs/cgroup/cpu.stat; echo $a; echo $b; cat /sys/fs/cgroup/cpu.max; kill $!"
    )
    done = sandbox("run", "--rm", "--cpus", "0.5", busybox_image, "sh", "-c", script)
    assert done.returncode == 0, (done.stdout, done.stderr)
    lines = done.stdout.splitlines()
    assert len(lines) >= 3, (done.stdout, done.stderr)
    assert lines[2] == "50000 100000", done.stdout
    used = int(lines[1].split()[1]) - int(lines[0].split()[1])
    share = used / 5e6
    # A functional check, not a timing one: unlimited, the loop would use a whole CPU.
    assert 0.3 <= share <= 0.7, f"busy loop used {share:.0%} of a CPU"


def test_scope_is_gone_after_rm(sandbox, busybox_image):
    done = sandbox("run", "--rm", "--name", "scoped", busybox_image, "cat", "/proc/1/cgroup")
    assert done.returncode == 0, done.stderr
    # systemd stops the scope as a job: give it a moment.
    for _ in range(100):
        if "sandbox-" not in _scopes():
            break
        time.sleep(0.1)
    assert "sandbox-" not in _scopes()


def test_weights_reservation_and_cpuset_reach_the_cgroup(sandbox, busybox_image):
    files = ("cpuset.cpus", "cpu.weight", "memory.low", "io.weight")
    done = sandbox(
        "run",
        "--rm",
        "--cpuset-cpus",
        "0",
        "--cpu-weight",
        "300",
        "--memory-reservation",
        "32m",
        "--blkio-weight",
        "500",
        busybox_image,
        "sh",
        "-c",
        "; ".join(f"echo {name}=$(cat /sys/fs/cgroup/{name})" for name in files),
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    values = dict(line.split("=", 1) for line in done.stdout.splitlines())
    assert values["cpuset.cpus"] == "0"
    assert values["cpu.weight"] == "300"
    assert values["memory.low"] == str(32 << 20)
    # --blkio-weight's 10..1000 scale onto io.weight's 1..10000, as crun converts it.
    assert values["io.weight"] == f"default {1 + (500 - 10) * 9999 // 990}"


def test_stats_reads_the_live_cgroup(sandbox, busybox_image):
    script = "head -c 16777216 /dev/zero > /dev/shm/fill; (while :; do :; done) & sleep 300"
    done = sandbox(
        "run", "-d", "--name", "st", "--memory", "64m", busybox_image, "sh", "-c", script
    )
    assert done.returncode == 0, done.stderr
    try:
        sample: dict = {}
        for _ in range(60):  # until the 16 MiB file is written (TCG is slow)
            raw = sandbox("stats", "--no-stream", "--format", "json", "st").stdout
            sample = json.loads(raw)[0]
            if sample["mem_usage"] >= 16 << 20:
                break
            time.sleep(0.5)
        assert sample["name"] == "st"
        assert sample["mem_limit"] == 64 << 20, sample
        assert 16 << 20 <= sample["mem_usage"] < 64 << 20, sample
        assert sample["pids"] >= 2, sample  # the busy subshell, and sleep (sh exec'd it)
        assert sample["cpu_percent"] > 10, sample  # the busy loop
        table = sandbox("stats", "--no-stream", "st").stdout
        assert " st " in table and "/ 67.11MB" in table, table  # decimal units, as podman
    finally:
        sandbox("rm", "-f", "st")


@pytest.mark.needs("native_monitor")
def test_detached_oom_under_the_native_monitor(sandbox, sandbox_env, busybox_image):
    """A detached container's monitor execs the compiled C program and back into Python: the
    OOM kill, the exit and the scope (whose holder it keeps across the execs) come out right."""
    from sandbox.rootless.cgroups.systemd import unit_name

    script = 'read go; x=$(head -c 209715200 /dev/zero | tr "\\0" a); echo survived'
    done = sandbox(
        "run",
        "-d",
        "-i",
        "--name",
        "doom",
        "--memory",
        "64m",
        "--memory-swap",
        "64m",
        busybox_image,
        "sh",
        "-c",
        script,
    )
    assert done.returncode == 0, done.stderr
    cid = done.stdout.strip()
    record = sandbox_env.data_home / "sandbox" / "containers" / cid / "container.json"
    monitor = json.loads(record.read_text())["monitor_pid"]
    for _ in range(600):  # it execs right after reporting "started" (TCG is slow)
        if "sandbox-monitor-" in os.readlink(f"/proc/{monitor}/exe"):
            break
        time.sleep(0.1)
    assert "sandbox-monitor-" in os.readlink(f"/proc/{monitor}/exe")
    assert unit_name(cid) in _scopes()
    attach = subprocess.run(
        [*sandbox_env.argv_prefix(), "attach", "doom"],
        input="go\n",
        env=sandbox_env.env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert attach.returncode == 137, attach.stderr
    assert sandbox("wait", "doom").stdout.strip() == "137"
    listed = json.loads(sandbox("ps", "-a", "--format", "json").stdout)
    (doom,) = [c for c in listed if c["Id"] == cid]
    assert doom["OOMKilled"] is True, doom
    assert sandbox("rm", "doom").returncode == 0
    for _ in range(100):  # systemd stops the scope as a job
        if unit_name(cid) not in _scopes():
            break
        time.sleep(0.1)
    assert unit_name(cid) not in _scopes()
