"""Resource limits on a host without delegated cgroup v2 (this CI machine: hybrid layout, no
systemd user manager): a limit fails with exit 125 and says why and what to change, unless
cgroups are disabled, and then the container runs with one warning. The enforcing side runs in
a systemd VM (tests/vm)."""

from __future__ import annotations

import pytest

from sandbox.rootless import cgroups

pytestmark = pytest.mark.needs("userns", "newuidmap", "busybox")


def _no_delegation() -> None:
    manager = cgroups.select()
    if manager.name != "disabled":
        pytest.skip(f"this host delegates cgroups ({manager.name}); tests/vm covers it")


def test_memory_limit_without_delegation_fails_with_hint(sandbox, busybox_image):
    _no_delegation()
    done = sandbox("run", "--rm", "--memory", "64m", busybox_image, "true")
    assert done.returncode == 125, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("Error: cannot enforce --memory"), done.stderr
    assert lines[1].startswith("Hint: "), done.stderr
    assert "--cgroups=disabled" in lines[1]
    assert "Traceback" not in done.stderr
    # Nothing half done: no container record was left behind.
    assert sandbox("ps", "-a", "-q").stdout.strip() == ""


def test_cgroups_disabled_runs_with_one_warning(sandbox, busybox_image):
    done = sandbox(
        "run",
        "--rm",
        "--cgroups=disabled",
        "--memory",
        "64m",
        "--pids-limit",
        "20",
        busybox_image,
        "echo",
        "ran",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ran\n"
    warnings = [line for line in done.stderr.splitlines() if "not enforced" in line]
    assert len(warnings) == 1, done.stderr
    assert "--memory, --pids-limit" in warnings[0]


def test_config_disables_cgroups(sandbox_env, busybox_image):
    config = sandbox_env.config_home / "sandbox"
    config.mkdir(parents=True, exist_ok=True)
    (config / "config.yaml").write_text("cgroups: disabled\n")
    try:
        done = sandbox_env.run("run", "--rm", "--cpus", "0.5", busybox_image, "true")
    finally:
        (config / "config.yaml").unlink()
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("not enforced") == 1


def test_no_limits_runs_silently(sandbox, busybox_image):
    done = sandbox("run", "--rm", busybox_image, "cat", "/proc/self/cgroup")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_bad_limit_is_a_usage_error(sandbox, busybox_image):
    done = sandbox("run", "--rm", "--memory", "lots", busybox_image, "true")
    assert done.returncode == 125
    assert "invalid --memory 'lots'" in done.stderr
    assert "Traceback" not in done.stderr
