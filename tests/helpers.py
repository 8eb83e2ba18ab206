"""Test harness helpers: feature gates that CI turns into failures, and the `sandbox` runner.

Skips and `sandbox doctor` share one source of truth, sandbox.rootless.features: needs("userns")
skips with the probe's own detail and fix. SANDBOX_REQUIRE_FEATURES (a comma list, or "all")
names the features the host is known to provide; a missing one is then a failure, so a green
CI run cannot hide a skipped namespace test.

Besides the product's probes, the harness knows features of its own:
  busybox        /bin/busybox from busybox-static (for the busybox rootfs)
  debian_rootfs  SANDBOX_TEST_DEBIAN_TARBALL, a debootstrap'd rootfs that scripts/test.sh builds
  unprivileged   the tests run as a user other than root (rootless is the product)
  registry       docker-registry and skopeo, for tests/integration/test_registry.py
  vm             SANDBOX_TEST_VM_IMAGE, the systemd VM image scripts/vm-image.sh builds
  gcc            gcc and libc6-dev, which build tests/security's static syscall probe
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NoReturn

import pytest

from sandbox.rootless import features

REPO = Path(__file__).resolve().parent.parent
HARNESS_FEATURES = ("busybox", "debian_rootfs", "unprivileged", "registry", "vm", "gcc")
DEFAULT_TIMEOUT = 120.0
ROOT_REASON = "container tests must run as an unprivileged user; use scripts/test.sh"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def required_features() -> frozenset[str]:
    """The features SANDBOX_REQUIRE_FEATURES says this host provides."""
    raw = os.environ.get("SANDBOX_REQUIRE_FEATURES", "")
    names = {n.strip() for n in raw.split(",") if n.strip()}
    if "all" in names:
        names |= set(features.NAMES) | set(HARNESS_FEATURES)
        names.discard("all")
    return frozenset(names)


def missing(feature: str, reason: str) -> NoReturn:
    """Skip the current test for lack of feature, or fail it when the feature is required."""
    if feature in required_features():
        pytest.fail(
            f"required feature {feature!r} is missing (SANDBOX_REQUIRE_FEATURES): {reason}",
            pytrace=False,
        )
    pytest.skip(f"needs {feature}: {reason}")


@functools.cache
def _probe(name: str) -> features.Probe:
    return features.probe(name)


def needs(*names: str) -> None:
    """Skip (or, when required, fail) unless every named feature is available.

    Product features are probed by sandbox.rootless.features; harness features are checked here.
    """
    for name in names:
        if name == "unprivileged":
            require_unprivileged()
        elif name == "debian_rootfs":
            debian_tarball_path()
        elif name == "vm":  # SANDBOX_TEST_VM_IMAGE, the systemd VM image (scripts/vm-image.sh)
            from tests.vm.test_cgroups_vm import vm_image

            vm_image()
        elif name == "busybox":
            from tests.support.images import ImageUnavailable, find_static_busybox

            try:
                find_static_busybox()
            except ImageUnavailable as e:
                missing("busybox", str(e))
        elif name in features.NAMES:
            result = _probe(name)
            if not result.ok:
                fix = f" (fix: {result.fix})" if result.fix else ""
                missing(name, result.detail + fix)
        else:
            known = ", ".join((*features.NAMES, *HARNESS_FEATURES))
            raise ValueError(f"unknown feature {name!r}; known: {known}")


def require_unprivileged() -> None:
    """Container tests prove nothing about rootless when run as root: refuse (fail in CI)."""
    if os.geteuid() != 0:
        return
    if in_ci() or "unprivileged" in required_features():
        pytest.fail(ROOT_REASON, pytrace=False)
    pytest.skip(ROOT_REASON)


def debian_tarball_path() -> Path:
    raw = os.environ.get("SANDBOX_TEST_DEBIAN_TARBALL", "")
    if not raw:
        missing(
            "debian_rootfs",
            "SANDBOX_TEST_DEBIAN_TARBALL is not set (scripts/test.sh run "
            "as root builds /var/cache/sandbox-tests/debian-bookworm.tar with debootstrap)",
        )
    path = Path(raw)
    if not path.is_file() or not os.access(path, os.R_OK):
        missing("debian_rootfs", f"SANDBOX_TEST_DEBIAN_TARBALL={raw} is not a readable file")
    return path


@dataclasses.dataclass(frozen=True)
class SandboxEnv:
    """An isolated home for `sandbox`: its own HOME, XDG data, config and runtime directories."""

    root: Path

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def data_home(self) -> Path:
        return self.root / "data"

    @property
    def config_home(self) -> Path:
        return self.root / "config"

    @property
    def runtime_dir(self) -> Path:
        return self.root / "run"

    @classmethod
    def create(cls, root: Path) -> SandboxEnv:
        env = cls(root)
        for path in (env.home, env.data_home, env.config_home):
            path.mkdir(parents=True, exist_ok=True)
        env.runtime_dir.mkdir(mode=0o700, exist_ok=True)
        return env

    @property
    def env(self) -> dict[str, str]:
        """The environment `sandbox` runs with: ours, minus anything that points elsewhere."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("XDG_", "SANDBOX_")) or k == "SANDBOX_DEBUG"
        }
        env.update(
            HOME=str(self.home),
            XDG_DATA_HOME=str(self.data_home),
            XDG_CONFIG_HOME=str(self.config_home),
            XDG_RUNTIME_DIR=str(self.runtime_dir),
        )
        # The tree under test, even when it is not installed in this interpreter.
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = f"{REPO}{os.pathsep}{path}" if path else str(REPO)
        return env

    def argv_prefix(self) -> list[str]:
        """The command line that runs `sandbox` (for tests that start it with Popen)."""
        return [sys.executable, "-m", "sandbox"]

    def run(
        self,
        *args: str | os.PathLike[str],
        input: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        check: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `python -m sandbox ARGS` here; never hangs longer than timeout (then fails)."""
        return run_sandbox(
            *args, input=input, timeout=timeout, check=check, env={**self.env, **(env or {})}
        )


def run_sandbox(
    *args: str | os.PathLike[str],
    env: Mapping[str, str],
    input: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "sandbox", *map(os.fspath, args)]
    # Its own session, so a timeout kills the whole tree (helpers and containers included),
    # not only the `sandbox` process while a child keeps our pipes open.
    process = subprocess.Popen(
        argv,
        env=dict(env),
        text=True,
        start_new_session=True,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        stdout, stderr = process.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(process)
        try:
            stdout, stderr = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            stdout, stderr = "", "(output lost: a process outside the session held the pipes)"
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
            process.wait(timeout=10)
        pytest.fail(
            f"{_show(argv)} timed out after {timeout:g}s and was killed\n"
            f"--- stdout\n{stdout}--- stderr\n{stderr}",
            pytrace=False,
        )
    done = subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)
    if check and done.returncode != 0:
        pytest.fail(
            f"{_show(argv)} exited {done.returncode}\n--- stdout\n{stdout}--- stderr\n{stderr}",
            pytrace=False,
        )
    return done


def _kill_tree(process: subprocess.Popen[str]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:  # something in the group changed its uid; at least the leader
        process.kill()


def _show(argv: list[str]) -> str:
    return "`sandbox " + " ".join(argv[3:]) + "`"


def ok(done: subprocess.CompletedProcess[str]) -> str:
    """The output of a command that must have succeeded (else the failure shows both streams)."""
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Poll condition until it holds; fail naming what was awaited after timeout seconds."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def run_detached(
    run: Callable[..., subprocess.CompletedProcess[str]], name: str, *args: str
) -> str:
    """`sandbox run -d --network none --name NAME ARGS...` (more options, the image, the
    command), which must succeed; the container's id."""
    return ok(run("run", "-d", "--network", "none", "--name", name, *args)).strip()


def netns_holder(env: SandboxEnv) -> dict[str, int] | None:
    """The rootless netns holder's record (pid, slirp_pid), if one is running for env."""
    path = env.runtime_dir / "sandbox" / "netns" / "holder.json"
    if not path.exists():
        return None
    data: dict[str, int] = json.loads(path.read_text())
    return data


def bin_dir_with(directory: Path, *programs: str) -> Path:
    """DIRECTORY/bin holding links to only the named host programs, for a PATH that lacks
    everything else (a missing helper, or a fake one written there afterwards)."""
    bin_dir = directory / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in programs:
        found = shutil.which(name)
        if found:
            (bin_dir / name).symlink_to(found)
    return bin_dir
