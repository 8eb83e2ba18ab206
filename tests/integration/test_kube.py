"""sandbox kube: generate from a real container and a real job, play a Pod, take it down.

A played pod's network namespace is its infra container's (POD-infra, the pause program of
sandbox/libexec/pause.c): the tests stop, start and restart app containers and check that the
others keep their network and the pod its published ports.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # the test extra: the Kubernetes API schema
import pytest
import yaml

from tests import helpers
from tests.helpers import SandboxEnv, netns_holder, ok, until

pytestmark = pytest.mark.needs("userns", "subids", "newuidmap")

Run = Callable[..., subprocess.CompletedProcess[str]]
HTTPD = "mkdir -p /www && echo {text} > /www/index.html && exec httpd -f -p {port} -h /www"


def validate(manifest: dict[str, object]) -> None:
    kubernetes_validate.validate(manifest, kubernetes_validate.latest_version(), strict=True)


@pytest.fixture(scope="module")
def pause(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pause program, built as `kube play` builds it (which needs cc and a static libc)."""
    from sandbox import libexec

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        program, why = libexec.pause_program()
    if program is None:
        helpers.missing("gcc", f"kube play cannot build its pause program: {why}")
    assert program is not None
    return program


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _get(port: int, timeout: float = 10) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=timeout) as answer:
        return str(answer.read().decode()).strip()


def _wait_http(port: int, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return _get(port, timeout=2)
        except OSError as e:
            if time.monotonic() > deadline:
                pytest.fail(f"nothing answered on 127.0.0.1:{port}: {e}")
            time.sleep(0.1)


def _inspect(run: Run, name: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(ok(run("inspect", name)))[0]
    return found


def _eth0(run: Run, name: str) -> str:
    return ok(run("exec", name, "ip", "-4", "-o", "addr", "show", "eth0")).split()[3]


def _alive(pid: int) -> bool:
    """Running, or a zombie nobody reaped."""
    return Path(f"/proc/{pid}").exists()


@pytest.fixture
def played(sandbox_env: SandboxEnv, tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], None]]:
    """Play a Pod (validated against the API schema first); `kube down` it afterwards."""
    manifests: list[Path] = []

    def play(pod: dict[str, Any]) -> None:
        validate(pod)
        manifest = tmp_path / f"{pod['metadata']['name']}.yaml"
        manifest.write_text(yaml.safe_dump(pod))
        manifests.append(manifest)
        ok(sandbox_env.run("kube", "play", manifest))

    yield play
    for manifest in manifests:
        sandbox_env.run("kube", "down", manifest)
    sandbox_env.run("network", "rm", "kube")  # refused while another module's pod still uses it


def test_generate_from_container_and_job(
    sandbox_env: SandboxEnv, busybox_image: str, tmp_path: Path
) -> None:
    run = sandbox_env.run
    data = tmp_path / "data"
    data.mkdir()
    done = run(
        "create",
        "--name",
        "kgen",
        "-e",
        "A=1",
        "-v",
        f"{data}:/data:ro",
        "--tmpfs",
        "/t",
        "--cap-drop",
        "CHOWN",
        "--user",
        "1000",
        busybox_image,
        "sleep",
        "5",
    )
    assert done.returncode == 0, done.stderr
    try:
        out = run("kube", "generate", "kgen")
        assert out.returncode == 0, out.stderr
        pod = yaml.safe_load(out.stdout)
        validate(pod)
        c = pod["spec"]["containers"][0]
        assert c["command"] == ["sleep", "5"] and {"name": "A", "value": "1"} in c["env"]
        assert c["securityContext"]["capabilities"] == {"drop": ["CHOWN"]}
        assert c["securityContext"]["runAsNonRoot"] is True
    finally:
        run("rm", "-f", "kgen")
    (tmp_path / "sandbox.yaml").write_text(
        f"image: {busybox_image}\njobs:\n  test:\n    steps:\n      - echo one\n"
    )
    out = run("kube", "generate", "test", "-f", tmp_path / "sandbox.yaml")
    assert out.returncode == 0, out.stderr
    job = yaml.safe_load(out.stdout)
    validate(job)
    assert job["kind"] == "Job"
    missing = run("kube", "generate", "nosuch", "-f", tmp_path / "sandbox.yaml")
    assert missing.returncode == 125 and "Traceback" not in missing.stderr


def test_play_and_down(
    sandbox_env: SandboxEnv, busybox_image: str, tmp_path: Path, pause: Path
) -> None:
    run = sandbox_env.run
    manifest = tmp_path / "pod.yaml"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "kp"},
        "spec": {
            "restartPolicy": "Never",
            "volumes": [{"name": "shared", "emptyDir": {}}],
            "containers": [
                {
                    "name": "writer",
                    "image": busybox_image,
                    "command": ["sh", "-c"],
                    "args": ["echo $MSG > /shared/f; sleep 30"],
                    "env": [{"name": "MSG", "value": "from-writer"}],
                    "volumeMounts": [{"name": "shared", "mountPath": "/shared"}],
                },
                {
                    "name": "reader",
                    "image": busybox_image,
                    "command": ["sleep", "30"],
                    "volumeMounts": [{"name": "shared", "mountPath": "/shared"}],
                },
            ],
        },
    }
    validate(pod)
    manifest.write_text(yaml.safe_dump(pod))
    try:
        done = run("kube", "play", manifest)
        assert done.returncode == 0, done.stderr
        names = [line.split()[0] for line in done.stdout.splitlines()]
        assert names == ["kp-infra", "kp-writer", "kp-reader"]
        listing = json.loads(run("ps", "--format", "json").stdout)
        assert {"kp-infra", "kp-writer", "kp-reader"} <= {
            c["Names"][0] if isinstance(c["Names"], list) else c["Names"] for c in listing
        }
        # Played twice: refused, and the pod that runs is left as it was.
        again = run("kube", "play", manifest)
        assert again.returncode == 125 and "kp-infra" in again.stderr
        assert "Traceback" not in again.stderr
        # The infra holds the others' network: removing it alone is refused, as podman does.
        alone = run("rm", "-f", "kp-infra")
        assert alone.returncode == 125 and "Traceback" not in alone.stderr
        assert "kp-writer" in alone.stderr and "--depend" in alone.stderr
        for name in ("kp-infra", "kp-writer", "kp-reader"):
            assert _inspect(run, name)["State"]["Running"] is True, name
        # The emptyDir is shared by the pod's containers.
        seen = ""
        for _ in range(50):
            seen = run("exec", "kp-reader", "cat", "/shared/f").stdout
            if seen:
                break
        assert seen == "from-writer\n"
        pause_pid = _inspect(run, "kp-infra")["State"]["Pid"]
        assert _comm(pause_pid) == "pause"  # the infra container's PID 1
    finally:
        holder = netns_holder(sandbox_env)
        down = run("kube", "down", manifest)
        run("network", "rm", "kube")  # the last network: its holder and slirp4netns stop
    assert down.returncode == 0, down.stderr
    # The app containers first, the infra container (whose namespace they are in) last.
    assert down.stdout.split() == ["kp-writer", "kp-reader", "kp-infra"]
    assert run("ps", "-a", "--format", "json").stdout.count("kp-") == 0
    assert "kp-shared" not in run("volume", "ls").stdout
    if holder is not None and not run("network", "ls", "-q").stdout.split():
        # The last network gone: no holder, no slirp4netns, no pause process is left.
        pids = (holder["pid"], holder["slirp_pid"])
        until(lambda: not any(_alive(p) for p in pids), "the holder and slirp4netns to end")
    until(lambda: not _alive(pause_pid), "the pause process to end")
    # No C compiler: no pause program, so no pod; one line that says what to install, and
    # nothing made (no container, no network).
    nowhere = tmp_path / "no-cc"
    nowhere.mkdir()
    networks = run("network", "ls", "-q").stdout.split()
    refused = run("kube", "play", manifest, env={"PATH": str(nowhere)})
    assert refused.returncode == 125 and "Traceback" not in refused.stderr
    assert "no C compiler" in refused.stderr and "apt install gcc libc6-dev" in refused.stderr
    assert run("ps", "-a", "--format", "json").stdout.count("kp-") == 0
    assert run("network", "ls", "-q").stdout.split() == networks
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Pod\nmetadata: {name: x}\nspec: {containers: [{name: a}]}\n")
    refused = run("kube", "play", bad)
    assert refused.returncode == 125 and "image" in refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.mark.needs("userns", "subids", "newuidmap", "slirp4netns", "tun", "nftables")
def test_a_pods_containers_reach_each_other_over_localhost(
    sandbox_env: SandboxEnv, busybox_image: str, tmp_path: Path, pause: Path
) -> None:
    run = sandbox_env.run
    manifest = tmp_path / "pod.yaml"
    server = (
        "mkdir -p /www && echo hello-over-localhost > /www/index.html && httpd -f -p 8080 -h /www"
    )
    client = (
        "for i in $(seq 100); do wget -qO- http://localhost:8080/ > /tmp/got && break; "
        "sleep 0.1; done; sleep 30"
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "lp"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {"name": "web", "image": busybox_image, "command": ["sh", "-c", server]},
                {"name": "client", "image": busybox_image, "command": ["sh", "-c", client]},
            ],
        },
    }
    validate(pod)
    manifest.write_text(yaml.safe_dump(pod))
    try:
        done = run("kube", "play", manifest)
        assert done.returncode == 0, done.stderr
        got = ""
        for _ in range(100):
            got = run("exec", "lp-client", "cat", "/tmp/got").stdout
            if got:
                break
            time.sleep(0.1)
        assert got == "hello-over-localhost\n"
        # One network namespace: the same eth0 address seen from both containers.
        addresses = [
            run("exec", name, "ip", "-4", "-o", "addr", "show", "eth0").stdout.split()[3]
            for name in ("lp-web", "lp-client")
        ]
        assert addresses[0] == addresses[1] and addresses[0].startswith("10.89.")
        # The namespace is the infra container's: both say so, and it is on the network.
        for name in ("lp-web", "lp-client"):
            assert _inspect(run, name)["HostConfig"]["NetworkMode"] == "container:lp-infra"
        infra = _inspect(run, "lp-infra")
        assert infra["HostConfig"]["NetworkMode"] == "bridge"
        assert infra["HostConfig"]["ReadonlyRootfs"] is True
        assert infra["Config"]["Cmd"] == ["/pause"]
        # Its PID 1 is the pause program: SIGTERM (stop) ends it with 0, at once.
        ok(run("stop", "-t", "5", "lp-infra"))
        state = _inspect(run, "lp-infra")["State"]
        assert state["Running"] is False and state["ExitCode"] == 0
    finally:
        down = run("kube", "down", manifest)
        run("network", "rm", "kube")
    assert down.returncode == 0, down.stderr


NETWORK = pytest.mark.needs("userns", "subids", "newuidmap", "slirp4netns", "tun", "nftables")


@NETWORK
def test_the_network_outlives_the_first_container_stopped_and_started(
    sandbox_env: SandboxEnv,
    busybox_image: str,
    played: Callable[[dict[str, Any]], None],
    pause: Path,
) -> None:
    run = sandbox_env.run
    web_port, side_port = _free_port(), _free_port()
    port = {"hostIP": "127.0.0.1"}
    played({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "sp"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {"name": "web", "image": busybox_image,
                 "command": ["sh", "-c", HTTPD.format(text="from-web", port=8080)],
                 "ports": [{"containerPort": 8080, "hostPort": web_port, **port}]},
                {"name": "side", "image": busybox_image,
                 "command": ["sh", "-c", HTTPD.format(text="from-side", port=8081)],
                 "ports": [{"containerPort": 8081, "hostPort": side_port, **port}]},
            ],
        },
    })  # fmt: skip
    assert _wait_http(web_port) == "from-web" and _wait_http(side_port) == "from-side"
    address = _eth0(run, "sp-side")
    # The first container goes: the second keeps its network and the pod its ports.
    ok(run("stop", "-t", "1", "sp-web"))  # httpd as PID 1 ignores SIGTERM
    assert _inspect(run, "sp-web")["State"]["Running"] is False
    assert _get(side_port) == "from-side"
    assert _eth0(run, "sp-side") == address
    got = ok(run("exec", "sp-side", "wget", "-qO-", "http://localhost:8081/"))
    assert got.strip() == "from-side"
    # Started again, it joins the same namespace: its port answers, localhost reaches it.
    ok(run("start", "sp-web"))
    assert _wait_http(web_port) == "from-web"
    assert _eth0(run, "sp-web") == address
    got = ok(run("exec", "sp-side", "wget", "-qO-", "http://localhost:8080/"))
    assert got.strip() == "from-web"


@NETWORK
def test_a_published_port_answers_while_app_containers_restart(
    sandbox_env: SandboxEnv,
    busybox_image: str,
    played: Callable[[dict[str, Any]], None],
    pause: Path,
) -> None:
    run = sandbox_env.run
    web_port = _free_port()
    played({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "rp"},
        "spec": {
            "restartPolicy": "Always",
            "containers": [
                # First in the manifest (the old design's namespace owner), and short-lived.
                {"name": "flaky", "image": busybox_image,
                 "command": ["sh", "-c", "sleep 0.3; exit 1"]},
                {"name": "web", "image": busybox_image,
                 "command": ["sh", "-c", HTTPD.format(text="from-web", port=8080)],
                 "ports": [{"containerPort": 8080, "hostPort": web_port,
                            "hostIP": "127.0.0.1"}]},
            ],
        },
    })  # fmt: skip
    assert _wait_http(web_port) == "from-web"
    address = _eth0(run, "rp-web")
    # Every request answers while the first container exits and is restarted, again and again.
    answers = 0
    while _inspect(run, "rp-flaky")["RestartCount"] < 3:
        assert _get(web_port) == "from-web"
        answers += 1
        time.sleep(0.1)
    assert answers > 0 and _eth0(run, "rp-web") == address
    # The web container itself killed: the restart policy brings it back behind the same port.
    restarts = _inspect(run, "rp-web")["RestartCount"]
    ok(run("kill", "rp-web"))
    until(lambda: _inspect(run, "rp-web")["RestartCount"] > restarts, "rp-web to restart")
    assert _wait_http(web_port) == "from-web"
    assert _eth0(run, "rp-web") == address


def test_the_pause_rootfs_holds_only_pause(
    pause: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sandbox import libexec

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    rootfs, why = libexec.pause_rootfs()
    assert rootfs is not None, why
    assert libexec.pause_rootfs() == (rootfs, why)  # made once
    found = {str(p.relative_to(rootfs)): p for p in rootfs.rglob("*")}
    regular = {name for name, p in found.items() if p.is_file() and p.stat().st_size}
    assert regular == {"pause"}  # besides empty mount points (directories and files)
    assert all(p.is_dir() or p.stat().st_size == 0 for name, p in found.items() if name != "pause")
    assert not any(p.is_symlink() for p in found.values())
    for p in (rootfs, *found.values()):
        assert p.stat().st_uid == os.getuid() and not p.stat().st_mode & 0o022, p
    assert (rootfs / "pause").read_bytes() == pause.read_bytes()
    assert not [p for p in tmp_path.rglob(".*")]  # no temporary left


_PARENT = """
import os, sys, time
kids = []
for delay in (0, 0.3, 0.3):
    pid = os.fork()
    if pid == 0:
        time.sleep(delay)
        os._exit(0)
    kids.append(pid)
print(*kids, flush=True)
os.execv(sys.argv[1], [sys.argv[1]])
"""


def _state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[0]


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_pause_reaps_its_children_and_exits_0_on_sigterm_or_sigint(
    pause: Path, sig: signal.Signals
) -> None:
    """The children of the process that execs pause become its children: one ended before
    the exec, two after; none is left a zombie. Then the signal ends it with 0."""
    usage = subprocess.run([pause, "--help"], capture_output=True, text=True, check=False)
    assert usage.returncode == 125 and "usage" in usage.stderr
    proc = subprocess.Popen(
        [sys.executable, "-c", _PARENT, str(pause)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        kids = [int(k) for k in proc.stdout.readline().split()]
        assert len(kids) == 3
        until(lambda: _comm(proc.pid).startswith("sandbox-pause"), "the exec")
        until(lambda: all(_state(k) is None for k in kids), "pause to reap its children")
        assert proc.poll() is None and _state(proc.pid) == "S"  # asleep, not spinning
        os.kill(proc.pid, signal.SIGCHLD)  # a stray SIGCHLD does not end it
        time.sleep(0.1)
        assert proc.poll() is None
        os.kill(proc.pid, sig)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
