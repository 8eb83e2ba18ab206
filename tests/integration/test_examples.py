"""Every example in examples/ runs here, as the unprivileged test user, against local images.

The CI examples' shell steps that call sandbox are extracted from the YAML (GitHub Actions
`run:` blocks, GitLab `script:` lines) and run with `sandbox` on PATH, so a broken example
fails the suite instead of a user's pipeline.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, SandboxEnv

EXAMPLES = REPO / "examples"

pytestmark = pytest.mark.needs("userns", "subids", "newuidmap")


def _shell(
    env: SandboxEnv, tmp_path: Path, script: str, cwd: Path
) -> subprocess.CompletedProcess[str]:
    """Run script with `sh -e` where `sandbox` is this tree's sandbox in env's isolated home."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    wrapper = bindir / "sandbox"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m sandbox "$@"\n')
    wrapper.chmod(0o755)
    environ = {**env.env, "PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    environ["CI"] = "true"
    return subprocess.run(
        ["sh", "-ec", script],
        cwd=cwd,
        env=environ,
        text=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
        check=False,
    )


def _checkout(tmp_path: Path) -> Path:
    """A copy of examples/ laid out as in the repository (the CI files cd into it)."""
    root = tmp_path / "checkout"
    shutil.copytree(EXAMPLES, root / "examples")
    return root


def _calls_sandbox(script: str) -> bool:
    return any(line.strip().startswith("sandbox ") for line in script.splitlines())


def test_project_example_jobs_run(
    sandbox_env: SandboxEnv, busybox_image: str, tmp_path: Path
) -> None:
    project = _checkout(tmp_path) / "examples" / "project"
    outputs = {}
    for job in ("test", "lint"):
        done = sandbox_env.run("job", "-f", project / "sandbox.yaml", job)
        assert done.returncode == 0, f"job {job}: {done.stdout}{done.stderr}"
        outputs[job] = done.stdout
    assert "hello from /work" in outputs["test"]
    assert "checking (STRICT=1)" in outputs["test"] and "all checks passed" in outputs["test"]
    assert "lint ok" in outputs["lint"]


def test_github_actions_workflow_steps_run(
    sandbox_env: SandboxEnv, busybox_image: str, tmp_path: Path
) -> None:
    workflow = yaml.safe_load((EXAMPLES / "ci" / "github-actions.yml").read_text())
    root = _checkout(tmp_path)
    ran = 0
    for job in workflow["jobs"].values():
        workdir = job.get("defaults", {}).get("run", {}).get("working-directory", ".")
        for step in job["steps"]:
            script = step.get("run")
            if script is None or not _calls_sandbox(script):
                continue
            done = _shell(sandbox_env, tmp_path, script, root / workdir)
            assert done.returncode == 0, f"step {step.get('name')}:\n{done.stdout}{done.stderr}"
            ran += 1
    assert ran >= 3
    assert (root / "examples" / "project" / "events.jsonl").read_text().count('"event"') > 3


def test_gitlab_ci_job_script_runs(
    sandbox_env: SandboxEnv, busybox_image: str, tmp_path: Path
) -> None:
    pipeline = yaml.safe_load((EXAMPLES / "ci" / "gitlab-ci.yml").read_text())
    root = _checkout(tmp_path)
    job = pipeline["sandbox-test"]
    lines = job["script"]
    assert any(_calls_sandbox(line) for line in lines)
    done = _shell(sandbox_env, tmp_path, "\n".join(lines), root)
    assert done.returncode == 0, f"{done.stdout}{done.stderr}"
    assert "all checks passed" in done.stdout
    for artifact in job["artifacts"]["paths"]:
        assert (root / artifact).is_file()


def test_seccomp_example_denies_network_sockets(
    sandbox_env: SandboxEnv, busybox_image: str
) -> None:
    """examples/seccomp/deny-network.json, used as its comment says: socket() is refused."""
    profile = EXAMPLES / "seccomp" / "deny-network.json"
    script = "wget -q -O - http://127.0.0.1:9/ ; echo status=$?"
    confined = sandbox_env.run(
        "run",
        "--rm",
        "--network",
        "none",
        "--security-opt",
        f"seccomp={profile}",
        busybox_image,
        "sh",
        "-c",
        script,
    )
    assert "status=1" in confined.stdout, confined.stderr
    assert "ermission denied" in confined.stderr, confined.stderr
    # Without the profile the socket is made and the connection is refused instead.
    free = sandbox_env.run("run", "--rm", "--network", "none", busybox_image, "sh", "-c", script)
    assert "refused" in free.stderr, free.stderr
