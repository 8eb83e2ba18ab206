"""Driving sandbox-runtime from tests: bundles written by the test, the runtime run as the tree
under test (python -m sandbox.oci.runtime_cli), and a wrapper script for podman --runtime."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.helpers import REPO

RUNTIME = [sys.executable, "-m", "sandbox.oci.runtime_cli"]


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_")}
    path = out.get("PYTHONPATH")
    out["PYTHONPATH"] = f"{REPO}{os.pathsep}{path}" if path else str(REPO)
    return out


def wrapper(directory: Path) -> Path:
    """An executable that runs the runtime under test (podman wants one path)."""
    script = directory / "sandbox-runtime"
    script.write_text(
        f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m sandbox.oci.runtime_cli "$@"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return script


class Runtime:
    def __init__(self, root: Path) -> None:
        self.root = root

    def __call__(
        self, *args: str | os.PathLike[str], stdout: Any = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run one verb. Output goes to files (or stdout=): a created container's PID 1
        keeps the create's stdout open, so a captured pipe would not see EOF."""
        out = self.root.parent / f"rt-{time.monotonic_ns()}.out"
        err = out.with_suffix(".err")
        with open(out, "w") as o, open(err, "w") as e:
            done = subprocess.run(
                [*RUNTIME, "--root", str(self.root), *map(str, args)],
                stdout=stdout or o,
                stderr=stdout or e,
                stdin=subprocess.DEVNULL,
                env=env(),
                timeout=timeout,
                text=True,
                check=False,
            )
        return subprocess.CompletedProcess(
            done.args, done.returncode, out.read_text(), err.read_text()
        )

    def state(self, container_id: str) -> dict[str, Any]:
        done = self("state", container_id)
        assert done.returncode == 0, done.stderr
        state: dict[str, Any] = json.loads(done.stdout)
        return state

    def wait_status(self, container_id: str, status: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while self.state(container_id)["status"] != status:
            assert time.monotonic() < deadline, f"{container_id} never became {status}"
            time.sleep(0.05)

    def run_to_end(self, bundle: Path, container_id: str) -> str:
        """create, start, wait for stopped, delete; what the process wrote (stdout+stderr)."""
        log = bundle / f"{container_id}.log"
        with open(log, "w") as f:
            done = self("create", "--bundle", bundle, container_id, stdout=f)
        assert done.returncode == 0, done.stderr
        started = self("start", container_id)
        assert started.returncode == 0, started.stderr
        self.wait_status(container_id, "stopped")
        deleted = self("delete", container_id)
        assert deleted.returncode == 0, deleted.stderr
        return log.read_text()


def make_bundle(directory: Path, tarball: Path, **process: Any) -> Path:
    """A bundle from `sandbox oci spec --rootless` (with a mapping of the user's own uid)
    and a busybox rootfs; process fields replaced by the keyword arguments."""
    from sandbox.oci import spec as oci

    directory.mkdir(parents=True)
    (directory / "rootfs").mkdir()
    with tarfile.open(tarball) as tar:
        tar.extractall(directory / "rootfs")
    config = oci.template(rootless=True)
    config["process"]["terminal"] = False
    config["process"].update(process)
    config["root"]["readonly"] = False
    write_config(directory, config)
    return directory


def config_of(bundle: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((bundle / "config.json").read_text())
    return data


def write_config(bundle: Path, config: Mapping[str, Any]) -> None:
    (bundle / "config.json").write_text(json.dumps(config))
