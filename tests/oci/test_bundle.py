"""`sandbox run` writes config.json; `sandbox oci spec` and `sandbox run --bundle` (rootless)."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests import helpers
from tests.helpers import SandboxEnv

pytestmark = pytest.mark.needs("unprivileged", "userns", "busybox")


def _bundle(tmp_path: Path, tarball: Path, sandbox_env: SandboxEnv, **process: Any) -> Path:
    bundle = tmp_path / "bundle"
    (bundle / "rootfs").mkdir(parents=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(bundle / "rootfs")  # our own busybox tarball
    done = sandbox_env.run("oci", "spec", "--rootless", "--bundle", bundle)
    assert done.returncode == 0, done.stderr
    config = json.loads((bundle / "config.json").read_text())
    config["process"].update(terminal=False, **process)
    config["root"]["readonly"] = False
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def test_run_writes_config_json_shown_by_inspect_and_oci_spec(
    sandbox_env: SandboxEnv, busybox_image: str
) -> None:
    done = sandbox_env.run(
        "run", "--name", "ocicfg", "--ulimit", "nofile=64:64", busybox_image, "true"
    )
    assert done.returncode == 0, done.stderr
    shown = sandbox_env.run("inspect", "--format", "{{.OCIConfig}}", "ocicfg")
    assert shown.returncode == 0, shown.stderr
    config = json.loads(shown.stdout)
    assert config["process"]["args"] == ["true"]
    assert {"type": "RLIMIT_NOFILE", "hard": 64, "soft": 64} in config["process"]["rlimits"]
    spec = sandbox_env.run("oci", "spec", "--from", "ocicfg")
    assert json.loads(spec.stdout) == config
    sandbox_env.run("rm", "ocicfg")


def test_run_bundle_as_it_stands(
    sandbox_env: SandboxEnv, busybox_tarball: Path, tmp_path: Path
) -> None:
    bundle = _bundle(
        tmp_path,
        busybox_tarball,
        sandbox_env,
        args=["sh", "-c", "cat /proc/self/uid_map; hostname; ulimit -n"],
    )
    done = sandbox_env.run("run", "--rm", "--bundle", bundle)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split()
    assert lines[:3] == ["0", str(os.getuid()), "1"]  # the config's own (single) mapping
    assert lines[3:] == ["sandbox", "1024"]  # hostname and RLIMIT_NOFILE from config.json


def test_run_bundle_with_subordinate_mapping(
    sandbox_env: SandboxEnv, busybox_tarball: Path, tmp_path: Path
) -> None:
    from sandbox.rootless.idmap import for_current_user

    mapping = for_current_user("auto")
    if mapping.single:
        helpers.missing("subids", f"no subordinate ids: {mapping.single_reason}")
    bundle = _bundle(tmp_path, busybox_tarball, sandbox_env, args=["cat", "/proc/self/uid_map"])
    config = json.loads((bundle / "config.json").read_text())
    sub = mapping.uids[1]
    config["linux"]["uidMappings"].append({"containerID": 1, "hostID": sub.outside, "size": 1000})
    config["linux"]["gidMappings"].append(
        {"containerID": 1, "hostID": mapping.gids[1].outside, "size": 1000}
    )
    (bundle / "config.json").write_text(json.dumps(config))
    done = sandbox_env.run("run", "--rm", "--bundle", bundle)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[3:] == ["1", str(sub.outside), "1000"]
    # Ids that are not ours are refused before anything exists.
    config["linux"]["uidMappings"][1]["hostID"] = 1
    (bundle / "config.json").write_text(json.dumps(config))
    refused = sandbox_env.run("run", "--rm", "--bundle", bundle)
    assert refused.returncode == 125
    assert "linux.uidMappings" in refused.stderr and "Traceback" not in refused.stderr


def test_bundle_with_a_field_we_cannot_honour_is_refused(
    sandbox_env: SandboxEnv, busybox_tarball: Path, tmp_path: Path
) -> None:
    bundle = _bundle(tmp_path, busybox_tarball, sandbox_env, args=["true"])
    config = json.loads((bundle / "config.json").read_text())
    config["linux"]["devices"] = [{"path": "/dev/sda", "type": "b", "major": 8, "minor": 0}]
    (bundle / "config.json").write_text(json.dumps(config))
    before = sandbox_env.run("ps", "-a", "-q").stdout
    done = sandbox_env.run("run", "--bundle", bundle)
    assert done.returncode == 125
    assert "linux.devices[0]" in done.stderr and "Traceback" not in done.stderr
    assert sandbox_env.run("ps", "-a", "-q").stdout == before
