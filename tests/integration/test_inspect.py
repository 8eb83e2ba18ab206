"""`sandbox inspect`: podman-shaped JSON, --format templates, and the isolation report of a live
container compared field by field with what /proc says about its PID 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import SandboxEnv

pytestmark = pytest.mark.needs("userns", "subids", "newuidmap", "busybox")


def _wait_running(env: SandboxEnv, name: str, process: subprocess.Popen[str]) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"sandbox run exited {process.returncode}\n{out}\n{err}", pytrace=False)
        done = env.run("ps", "--format", "json")
        for c in json.loads(done.stdout or "[]"):
            if name in c["Names"] and c["State"] == "running" and c["Pid"]:
                return int(c["Pid"])
        time.sleep(0.1)
    pytest.fail(f"{name} did not show as running in `sandbox ps`", pytrace=False)


@pytest.fixture
def sleeper(sandbox_env: SandboxEnv, busybox_image: str) -> Iterator[tuple[str, int]]:
    """A container running `sleep 60` in the background: (name, host pid of its PID 1)."""
    name = f"sleeper-{uuid.uuid4().hex[:8]}"
    process = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "run", "--name", name, busybox_image, "sleep", "60"],
        env=sandbox_env.env,
        text=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        yield name, _wait_running(sandbox_env, name, process)
    finally:
        sandbox_env.run("rm", "-f", name)
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.communicate()
        # The supervisor may record the exit after rm took the record: remove it again.
        sandbox_env.run("rm", "-f", name)


def _ns(pid: int | str, kind: str) -> int:
    target = os.readlink(f"/proc/{pid}/ns/{kind}")
    return int(target.split("[")[1].rstrip("]"))


def test_isolation_report_matches_proc(sandbox_env: SandboxEnv, sleeper: tuple[str, int]) -> None:
    name, pid = sleeper
    done = sandbox_env.run("inspect", "--isolation", "--format", "json", name, check=True)
    report = json.loads(done.stdout)
    assert report["pid"] == pid
    assert report["errors"] == []
    kinds = {n["kind"]: n for n in report["namespaces"]}
    for kind in ("user", "mnt", "pid", "net", "ipc", "uts", "cgroup"):
        assert kinds[kind]["inode"] == _ns(pid, kind), kind
        assert kinds[kind]["shared_with_host"] == (_ns(pid, kind) == _ns("self", kind)), kind
        assert kinds[kind]["shared_with_host"] is False, kind
    proc = Path(f"/proc/{pid}")
    uid_map = [
        [int(f) for f in line.split()] for line in (proc / "uid_map").read_text().splitlines()
    ]
    assert [[r["inside"], r["outside"], r["size"]] for r in report["uid_map"]] == uid_map
    gid_map = [
        [int(f) for f in line.split()] for line in (proc / "gid_map").read_text().splitlines()
    ]
    assert [[r["inside"], r["outside"], r["size"]] for r in report["gid_map"]] == gid_map
    status = dict(
        (k.strip(), v.strip())
        for k, _, v in (line.partition(":") for line in (proc / "status").read_text().splitlines())
    )
    for label, key in (("effective", "CapEff"), ("bounding", "CapBnd"), ("permitted", "CapPrm")):
        assert report["capabilities_hex"][label] == status[key]
        assert len(report["capabilities"][label]) == bin(int(status[key], 16)).count("1")
    modes = {"0": "disabled", "1": "strict", "2": "filter"}
    assert report["seccomp"] == modes[status["Seccomp"]]
    assert report["seccomp_filters"] == int(status.get("Seccomp_filters", "0"))
    assert report["no_new_privs"] == (status["NoNewPrivs"] == "1")
    points = {line.split()[4] for line in (proc / "mountinfo").read_text().splitlines()}
    for path in report["masked_paths"] + report["readonly_paths"]:
        assert path in points
    interfaces = [
        line.split(":")[0].strip() for line in (proc / "net/dev").read_text().splitlines()[2:]
    ]
    assert report["interfaces"] == interfaces
    unified = any(
        " - cgroup2 " in line and line.split()[4] == "/sys/fs/cgroup"
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
    )
    if not unified:
        assert report["cgroup"]["own"] is False
        assert "not enforced" in report["cgroup"]["note"]


def test_isolation_box_and_inspect_json(sandbox_env: SandboxEnv, sleeper: tuple[str, int]) -> None:
    name, pid = sleeper
    box = sandbox_env.run("inspect", "--isolation", name, env={"COLUMNS": "100"}, check=True)
    assert f"container {name}" in box.stdout
    assert "uid map" in box.stdout and "shared with the host" not in box.stdout
    assert str(_ns(pid, "net")) in box.stdout
    data = json.loads(sandbox_env.run("inspect", name, check=True).stdout)
    assert len(data) == 1
    item = data[0]
    assert item["Name"] == name
    assert item["State"]["Status"] == "running" and item["State"]["Running"] is True
    assert item["State"]["Pid"] == pid
    assert [item["Path"], *item["Args"]] == ["sleep", "60"]
    assert item["Config"]["Cmd"] == ["sleep", "60"]
    assert item["ImageName"] == "busybox"
    fields = sandbox_env.run(
        "inspect", "--format", "{{.State.Status}} {{.State.Pid}} {{json .Config.Cmd}}", name
    )
    assert fields.stdout == f'running {pid} ["sleep", "60"]\n'


def test_inspect_exited_container_and_image(sandbox_env: SandboxEnv, busybox_image: str) -> None:
    name = f"exited{os.getpid()}"
    sandbox_env.run("run", "--name", name, busybox_image, "sh", "-c", "exit 3")
    try:
        data = json.loads(sandbox_env.run("inspect", name, check=True).stdout)[0]
        assert data["State"]["Status"] == "exited"
        assert data["State"]["ExitCode"] == 3
        assert data["State"]["Running"] is False
        refused = sandbox_env.run("inspect", "--isolation", name)
        assert refused.returncode == 125
        assert "not running" in refused.stderr and "Hint:" in refused.stderr
    finally:
        sandbox_env.run("rm", "-f", name)
    image = json.loads(sandbox_env.run("inspect", "--type", "image", busybox_image).stdout)[0]
    assert any(tag.endswith("busybox:latest") for tag in image["RepoTags"])
    assert image["RootFS"]["Layers"]


def test_inspect_unknown_and_bad_template(sandbox_env: SandboxEnv) -> None:
    missing = sandbox_env.run("inspect", "no-such-thing")
    assert missing.returncode == 125
    assert "no container or image" in missing.stderr and "Hint:" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_run_print_isolation_draws_the_report_on_stderr(
    sandbox_env: SandboxEnv, busybox_image: str
) -> None:
    done = sandbox_env.run(
        "run",
        "--rm",
        "--network",
        "none",
        "--print-isolation",
        busybox_image,
        "sh",
        "-c",
        "sleep 1; echo out",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "out\n"
    for word in ("namespace", "uid map", "caps effective", "00000000800405fb", "seccomp"):
        assert word in done.stderr, done.stderr


def test_inspect_shows_the_security_settings_and_limits(
    sandbox_env: SandboxEnv, busybox_image: str
) -> None:
    done = sandbox_env.run(
        "run",
        "--name",
        "secure",
        "--network",
        "none",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        busybox_image,
        "true",
    )
    assert done.returncode == 0, done.stderr
    (info,) = json.loads(sandbox_env.run("inspect", "secure").stdout)
    security = info["Security"]
    assert security["cap_eff"] == "0000000000000000"
    assert security["no_new_privileges"] is True
    assert "/proc/kcore" in security["masked_paths"]
    assert security["seccomp"]
    assert info["State"]["OOMKilled"] is False and info["Cgroup"]["Manager"] == "disabled"
    assert sandbox_env.run("rm", "secure").returncode == 0
