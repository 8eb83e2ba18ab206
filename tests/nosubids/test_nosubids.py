"""A user with no lines in /etc/subuid and /etc/subgid: doctor fails and names the line to add,
and `sandbox run` still works with a single-id mapping and a warning that says so."""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

import pytest

from sandbox.rootless import idmap
from tests.helpers import SandboxEnv

USER = pwd.getpwuid(os.getuid()).pw_name


@pytest.fixture(autouse=True)
def _really_without_subids() -> None:
    # The premise of this file: the file lines really are absent (not skipped: a failure).
    assert not idmap.read_subids(idmap.SUBUID, USER, os.getuid()), f"{USER} has subuids"
    assert not idmap.read_subids(idmap.SUBGID, USER, os.getuid()), f"{USER} has subgids"


@pytest.mark.needs("unprivileged", "userns")
def test_doctor_fails_and_names_the_line(fresh_sandbox_env: SandboxEnv) -> None:
    done = fresh_sandbox_env.run("doctor", "--format", "json", "--fresh")
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    subids = {c["name"]: c for c in report["checks"]}["subids"]
    assert subids["status"] == "failed"
    assert f"no subordinate uids for {USER}" in subids["detail"]
    assert f"add the line '{USER}:100000:65536' to /etc/subuid and /etc/subgid" in subids["fix"]
    assert report["run_possible"] is True
    text = fresh_sandbox_env.run("doctor", "--check", "subids")
    assert text.returncode == 1
    assert f"'{USER}:100000:65536'" in text.stdout


@pytest.mark.needs("unprivileged", "userns", "busybox")
def test_run_works_with_the_single_mapping_warning(
    fresh_sandbox_env: SandboxEnv, busybox_tarball: Path
) -> None:
    imported = fresh_sandbox_env.run("image", "import", str(busybox_tarball), "busybox")
    assert imported.returncode == 0, imported.stderr
    # --network none: the single mapping is the point here, not the network helper.
    done = fresh_sandbox_env.run(
        "run", "--rm", "--network", "none", "busybox", "cat", "/proc/self/uid_map"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", str(os.getuid()), "1"]
    assert "single-id mapping" in done.stderr
    assert f"'{USER}:100000:65536'" in done.stderr
