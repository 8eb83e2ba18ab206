"""The pytest plugin (entry point pytest11 "sandbox"): fixtures that run commands in containers.

    def test_tool(sandbox_run):
        result = sandbox_run("busybox", ["sh", "-c", "echo hi"])
        assert result.exit_code == 0 and result.stdout == "hi\\n"

    def test_service(sandbox_container):
        web = sandbox_container("busybox", ["httpd", "-f", "-p", "8080"])
        assert web.exec(["wget", "-qO-", "localhost:8080"]).exit_code == 0

`sandbox_run` runs a command in a throwaway container (sandbox.api.run); `sandbox_container`
starts detached containers that are removed when the test ends. `sandbox_engine_env` (override
it in a conftest) gives the engine extra environment, e.g. XDG directories of a private store.
Loading the plugin imports only sandbox.api's standard-library modules.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from sandbox import api
from sandbox.errors import SandboxError


@pytest.fixture
def sandbox_engine_env() -> Mapping[str, str]:
    """Environment for the engine on top of the test process's (override in a conftest)."""
    return {}


@pytest.fixture
def sandbox_run(sandbox_engine_env: Mapping[str, str]) -> Callable[..., api.Result]:
    """sandbox_run(image, command, **options) -> Result: a command in a throwaway container."""

    def run(image: str, command: Any = (), **options: Any) -> api.Result:
        options.setdefault("engine_env", sandbox_engine_env)
        return api.run(image, command, **options)

    return run


@pytest.fixture
def sandbox_container(
    sandbox_engine_env: Mapping[str, str],
) -> Iterator[Callable[..., api.Container]]:
    """sandbox_container(image, command, **options) -> Container, removed after the test."""
    started: list[api.Container] = []

    def start(image: str, command: Any = (), **options: Any) -> api.Container:
        options.setdefault("engine_env", sandbox_engine_env)
        container = api.Container.start(image, command, **options)
        started.append(container)
        return container

    yield start
    for container in reversed(started):
        with contextlib.suppress(SandboxError):
            container.remove()
