"""`sandbox info`: what sandbox uses on this host, read now (yaml and json)."""

from __future__ import annotations

import json
import os
import platform
import shutil

import pytest
import yaml

from tests.helpers import SandboxEnv


@pytest.mark.needs("userns", "subids", "newuidmap")
def test_info_json_reports_this_host(fresh_sandbox_env: SandboxEnv) -> None:
    done = fresh_sandbox_env.run("info", "--format", "json", check=True)
    info = json.loads(done.stdout)
    assert info["host"]["kernel"] == platform.release()
    assert info["user"]["uid"] == os.getuid()
    uidmap = info["user"]["idmappings"]["uidmap"]
    assert uidmap[0] == {"inside": 0, "outside": os.getuid(), "size": 1}
    assert sum(r["size"] for r in uidmap[1:]) >= 65536
    assert info["store"]["data_root"] == str(fresh_sandbox_env.data_home / "sandbox")
    assert info["store"]["runtime_root"] == str(fresh_sandbox_env.runtime_dir / "sandbox")
    assert info["store"]["driver"] in ("overlay", "vfs")
    assert info["cgroups"]["layout"] in ("unified", "hybrid", "legacy", "none")
    slirp = shutil.which("slirp4netns")
    assert info["network"]["slirp4netns"]["path"] == slirp
    if slirp:
        assert "slirp4netns version" in info["network"]["slirp4netns"]["version"]
    assert "search" in info["registries"]


def test_info_yaml_and_bad_format(fresh_sandbox_env: SandboxEnv) -> None:
    done = fresh_sandbox_env.run("info", check=True)
    doc = yaml.safe_load(done.stdout)
    assert set(doc) >= {"host", "user", "store", "cgroups", "network", "registries"}
    bad = fresh_sandbox_env.run("info", "--format", "toml")
    assert bad.returncode == 125 and "Hint:" in bad.stderr


def test_global_options(fresh_sandbox_env: SandboxEnv) -> None:
    version = fresh_sandbox_env.run("--version", check=True)
    assert version.stdout.startswith("sandbox version ")
    bad = fresh_sandbox_env.run("--log-level", "loud", "ps")
    assert bad.returncode == 125
    assert "Hint: use one of: debug, info, warning, error" in bad.stderr
    assert fresh_sandbox_env.run("--log-level", "debug", "ps", check=True).returncode == 0
    completion = fresh_sandbox_env.run("--show-completion", "bash", check=True)
    assert "_sandbox_completion" in completion.stdout
