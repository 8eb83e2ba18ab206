"""`sandbox doctor`: every check ok / warning / failed with its fix, from the same probes as the
test skips; the exit status says whether something failed."""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

import pytest

from tests.helpers import SandboxEnv, bin_dir_with


def _unified_cgroup2() -> bool:
    return any(
        " - cgroup2 " in line and line.split()[4] == "/sys/fs/cgroup"
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
    )


def _doctor(env: SandboxEnv, *args: str, path: str | None = None) -> tuple[int, dict[str, object]]:
    extra = {"PATH": path} if path is not None else None
    done = env.run("doctor", "--format", "json", "--fresh", *args, env=extra)
    assert "Traceback" not in done.stderr
    return done.returncode, json.loads(done.stdout)


def _by_name(report: dict[str, object]) -> dict[str, dict[str, object]]:
    checks = report["checks"]
    assert isinstance(checks, list)
    return {c["name"]: c for c in checks}


@pytest.mark.needs("userns", "subids", "newuidmap", "overlay_userns")
def test_doctor_on_this_host(fresh_sandbox_env: SandboxEnv) -> None:
    code, report = _doctor(fresh_sandbox_env)
    checks = _by_name(report)
    # Everything a run needs is ok here...
    for name in ("sysctls", "userns", "subids", "newuidmap", "overlay_userns", "storage_fs"):
        assert checks[name]["status"] == "ok", checks[name]
    assert report["run_possible"] is True
    assert code == 0 and report["ok"] is True
    # ... and cgroup delegation is reported missing, with the fix, when the host lacks it.
    delegation = checks["cgroup_delegation"]
    if not _unified_cgroup2():
        assert delegation["status"] == "warning"
        assert "Delegate=cpu cpuset io memory pids" in str(delegation["fix"])
        assert "systemd.unified_cgroup_hierarchy=1" in str(delegation["fix"])
    for check in checks.values():
        assert check["status"] in ("ok", "warning", "failed")
        if check["status"] != "ok":
            assert check["fix"], check
    user = pwd.getpwuid(os.getuid()).pw_name
    assert str(checks["subids"]["detail"]).startswith(f"{user} has subordinate uids")


@pytest.mark.needs("userns", "newuidmap")
def test_doctor_names_the_package_without_slirp4netns(
    fresh_sandbox_env: SandboxEnv, tmp_path: Path
) -> None:
    # A PATH with the helpers a run needs, but no slirp4netns.
    bin_dir = bin_dir_with(
        tmp_path, "newuidmap", "newgidmap", "getsubids", "pasta", "fuse-overlayfs"
    )
    code, report = _doctor(fresh_sandbox_env, path=str(bin_dir))
    slirp = _by_name(report)["slirp4netns"]
    assert slirp["status"] == "warning"
    assert slirp["fix"] == "apt install slirp4netns"
    assert "not on PATH" in str(slirp["detail"])
    assert code == (0 if report["ok"] else 1)
    text = fresh_sandbox_env.run("doctor", env={"PATH": str(bin_dir)})
    assert "fix: apt install slirp4netns" in text.stdout


def test_doctor_text_and_bad_options(fresh_sandbox_env: SandboxEnv) -> None:
    done = fresh_sandbox_env.run("doctor", "--check", "cgroup_delegation", "--check", "tun")
    lines = done.stdout.splitlines()
    assert any("cgroup controllers delegated" in line for line in lines)
    assert "warnings" in lines[-1]
    bad = fresh_sandbox_env.run("doctor", "--format", "xml")
    assert bad.returncode == 125 and "Hint: use text or json" in bad.stderr
    unknown = fresh_sandbox_env.run("doctor", "--check", "nope")
    assert unknown.returncode == 125 and "known:" in unknown.stderr
