"""sandbox.api from a program (threaded, too) and the pytest plugin's fixtures in a test."""

from __future__ import annotations

import subprocess
import sys
import threading
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from sandbox import api
from sandbox.errors import ContainerError
from tests.helpers import SandboxEnv

pytestmark = pytest.mark.needs("userns", "subids", "newuidmap")


def engine_env(env: SandboxEnv) -> dict[str, str]:
    return {k: v for k, v in env.env.items() if k.startswith(("XDG_", "HOME", "PYTHONPATH"))}


def test_run_gives_output_exit_code_and_usage(sandbox_env: SandboxEnv, busybox_image: str) -> None:
    # Burn measurable CPU inside the container, so usage is the container's, not only ours.
    script = "echo out; echo err >&2; i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; exit 3"
    result = api.run(
        busybox_image,
        ["sh", "-c", script],
        env={"A": "1"},
        network="none",
        timeout=120,
        engine_env=engine_env(sandbox_env),
    )
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")
    idle = api.run(busybox_image, ["true"], network="none", engine_env=engine_env(sandbox_env))
    # The loop's CPU time is counted (the engine's own, ~0.2 s here, is in both).
    assert result.usage.cpu_seconds > idle.usage.cpu_seconds + 0.1
    assert result.usage.max_rss_kib > 0
    assert result.usage.wall_seconds >= result.usage.cpu_user_seconds / 2
    env = api.run(
        busybox_image, ["sh", "-c", "echo $A"], env={"A": "b c"}, engine_env=engine_env(sandbox_env)
    )
    assert env.stdout == "b c\n" and env.ok
    with pytest.raises(ContainerError, match="nosuchimage"):
        api.run(
            "nosuchimage",
            ["true"],
            engine_env=engine_env(sandbox_env),
            extra_args=["--pull", "never"],
        )


def test_run_from_threads_and_timeout(sandbox_env: SandboxEnv, busybox_image: str) -> None:
    results: dict[int, api.Result] = {}

    def worker(n: int) -> None:
        results[n] = api.run(
            busybox_image,
            ["sh", "-c", f"echo {n}"],
            network="none",
            engine_env=engine_env(sandbox_env),
        )

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {n: r.stdout for n, r in results.items()} == {0: "0\n", 1: "1\n", 2: "2\n"}
    with pytest.raises(api.Timeout):
        api.run(
            busybox_image,
            ["sleep", "60"],
            network="none",
            timeout=2,
            engine_env=engine_env(sandbox_env),
        )
    # The timed-out container was removed, not left behind.
    assert "api-" not in sandbox_env.run("ps", "-a").stdout


def test_detached_container(sandbox_env: SandboxEnv, busybox_image: str) -> None:
    with api.Container.start(
        busybox_image,
        ["sh", "-c", "echo started; sleep 60"],
        network="none",
        engine_env=engine_env(sandbox_env),
    ) as c:
        assert c.exec(["sh", "-c", "echo in; exit 4"]).exit_code == 4
        assert c.exec(["cat", "/etc/hostname"]).stdout.strip() == c.id[:12]
        for _ in range(50):
            if "started" in c.logs():
                break
        assert "started" in c.logs()
        c.stop(timeout=1)
    assert c.name not in sandbox_env.run("ps", "-a").stdout


PLUGIN_TEST = """
def test_in_a_container(sandbox_run, sandbox_container):
    result = sandbox_run("{image}", ["sh", "-c", "echo hello; exit 5"], network="none")
    assert (result.exit_code, result.stdout) == (5, "hello\\n")
    box = sandbox_container("{image}", ["sleep", "60"], network="none", name="plugin-box")
    assert box.exec(["echo", "inside"]).stdout == "inside\\n"
"""


def test_pytest_plugin_fixture(sandbox_env: SandboxEnv, busybox_image: str, tmp_path: Path) -> None:
    test_file = tmp_path / "test_uses_plugin.py"
    test_file.write_text(PLUGIN_TEST.format(image=busybox_image))
    # Installed, the pytest11 entry point loads the plugin; from a bare checkout, -p does.
    installed = any(ep.value == "sandbox.pytest_plugin" for ep in entry_points(group="pytest11"))
    load = [] if installed else ["-p", "sandbox.pytest_plugin"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *load, "-p", "no:cacheprovider", "-q", str(test_file)],
        env=sandbox_env.env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
    # The fixture removed its container at the end of the test.
    assert "plugin-box" not in sandbox_env.run("ps", "-a").stdout
