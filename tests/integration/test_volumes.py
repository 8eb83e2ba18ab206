"""Named volumes: `-v NAME:/path` creates one on first use; `sandbox volume` manages them."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest

from tests.helpers import SandboxEnv

Run = Callable[..., subprocess.CompletedProcess[str]]

pytestmark = pytest.mark.needs("userns", "subids", "newuidmap")


def test_a_named_volume_outlives_its_container(sandbox_env: SandboxEnv, busybox_image: str) -> None:
    run = sandbox_env.run
    done = run(
        "run",
        "--rm",
        "-v",
        "keepme:/data",
        busybox_image,
        "sh",
        "-c",
        "stat -c %u /data; echo kept > /data/f; chown 1000 /data/f",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"  # the container's root owns a fresh volume
    done = run(
        "run",
        "--rm",
        "-v",
        "keepme:/again:ro",
        busybox_image,
        "sh",
        "-c",
        "cat /again/f; stat -c %u /again/f; touch /again/x",
    )
    assert done.stdout.splitlines()[:2] == ["kept", "1000"]
    assert done.returncode != 0  # read-only
    assert "keepme" in run("volume", "ls").stdout
    # Files of subordinate ids are removed too.
    assert run("volume", "rm", "keepme").returncode == 0
    assert not (sandbox_env.data_home / "sandbox" / "volumes" / "keepme").exists()


def test_volume_create_ls_rm_and_errors(sandbox_env: SandboxEnv) -> None:
    run = sandbox_env.run
    assert run("volume", "create", "vol1").stdout.strip() == "vol1"
    again = run("volume", "create", "vol1")
    assert again.returncode == 125 and "already exists" in again.stderr
    assert run("volume", "ls", "-q").stdout.split().count("vol1") == 1
    assert '"Name": "vol1"' in run("volume", "ls", "--format", "json").stdout
    assert run("volume", "rm", "vol1").returncode == 0
    missing = run("volume", "rm", "vol1")
    assert missing.returncode == 125 and "no volume vol1" in missing.stderr
    bad = run("volume", "create", "../escape")
    assert bad.returncode == 125 and "invalid volume name" in bad.stderr


def test_bad_named_volume_in_run_creates_nothing(
    sandbox_env: SandboxEnv, busybox_image: str
) -> None:
    done = sandbox_env.run(
        "run", "--rm", "-v", "ok:/x", "-v", "/nonexistent-src:/y", busybox_image, "true"
    )
    assert done.returncode == 125
    assert not (sandbox_env.data_home / "sandbox" / "volumes" / "ok").exists()
