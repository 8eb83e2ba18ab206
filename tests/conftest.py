"""Fixtures and gates shared by every test.

Gates (tests/helpers.py): `@pytest.mark.needs("userns", ...)` or `helpers.needs(...)` skip with
the reason `sandbox doctor` would give, and fail instead for features listed in
SANDBOX_REQUIRE_FEATURES. Tests under tests/kernel and tests/integration create namespaces and
containers: they refuse to run as root (a skip, or a failure when CI=true).

Fixtures:
  sandbox_env        an isolated HOME and XDG tree for the whole session (images imported once)
  fresh_sandbox_env  the same, new for one test (an empty store)
  sandbox            sandbox_env.run: sandbox("run", "--rm", image, "true") -> CompletedProcess
  busybox_tarball    a busybox-static rootfs tarball, built once per session
  busybox_image      that tarball imported into sandbox_env as "busybox"; returns the name
  debian_tarball     the Debian bookworm rootfs tarball from SANDBOX_TEST_DEBIAN_TARBALL
  debian_image       that tarball imported into sandbox_env as "debian"; returns the name
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import helpers
from tests.helpers import SandboxEnv
from tests.support.images import ImageUnavailable, build_busybox_rootfs

_CONTAINER_TEST_DIRS = ("kernel", "integration")
_TESTS = Path(__file__).resolve().parent


def pytest_report_header(config: pytest.Config) -> list[str]:
    required = ", ".join(sorted(helpers.required_features())) or "(none)"
    return [f"sandbox: features that must not be skipped: {required}; CI={helpers.in_ci()}"]


def pytest_runtest_setup(item: pytest.Item) -> None:
    try:
        part = item.path.resolve().relative_to(_TESTS).parts[0]
    except ValueError:
        part = ""
    if part in _CONTAINER_TEST_DIRS:
        helpers.require_unprivileged()
    for marker in item.iter_markers("needs"):
        helpers.needs(*marker.args)


@pytest.fixture(scope="session")
def sandbox_env(tmp_path_factory: pytest.TempPathFactory) -> SandboxEnv:
    return SandboxEnv.create(tmp_path_factory.mktemp("sandbox-env"))


@pytest.fixture
def fresh_sandbox_env(tmp_path: Path) -> SandboxEnv:
    return SandboxEnv.create(tmp_path / "sandbox-env")


@pytest.fixture
def sandbox(sandbox_env: SandboxEnv) -> Callable[..., subprocess.CompletedProcess[str]]:
    return sandbox_env.run


@pytest.fixture(scope="session")
def busybox_tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        return build_busybox_rootfs(tmp_path_factory.mktemp("busybox") / "busybox.tar")
    except ImageUnavailable as e:
        helpers.missing("busybox", str(e))


def _import(env: SandboxEnv, tarball: Path, name: str) -> str:
    # Importing unpacks layers inside a user namespace: a rootless, namespaced operation.
    helpers.require_unprivileged()
    helpers.needs("userns")
    done = env.run("image", "import", tarball, name, timeout=600)
    if done.returncode != 0:
        pytest.fail(
            f"`sandbox image import {tarball} {name}` exited {done.returncode}\n"
            f"--- stdout\n{done.stdout}--- stderr\n{done.stderr}",
            pytrace=False,
        )
    return name


@pytest.fixture(scope="session")
def busybox_image(sandbox_env: SandboxEnv, busybox_tarball: Path) -> str:
    return _import(sandbox_env, busybox_tarball, "busybox")


@pytest.fixture(scope="session")
def debian_tarball() -> Path:
    return helpers.debian_tarball_path()


@pytest.fixture(scope="session")
def debian_image(sandbox_env: SandboxEnv, debian_tarball: Path) -> str:
    return _import(sandbox_env, debian_tarball, "debian")
