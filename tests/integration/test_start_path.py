"""The start path stays lean in real runs: how many user namespaces `run --rm` makes, and which
modules `sandbox run` and `sandbox exec` import with the image already in the store (counted,
not timed: the timings are benchmarks/bench.py's).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import SandboxEnv

pytestmark = pytest.mark.needs("userns", "subids", "newuidmap")

# Loaded only when a run needs them: a pull (the image is in the store here), hashing blobs,
# temporary files, threads.
NOT_ON_RUN = (
    "sandbox.images.pull",
    "sandbox.images.registry",
    "sandbox.images.manifest",
    "sandbox.runtime.networks",  # named networks and pods only
    "hashlib",
    "secrets",
    "tempfile",
    "logging",
    "concurrent.futures",
    "rich",
    "yaml",
    "httpx",
    "http.client",
    "ssl",
)
# exec joins a running container: no image store, no container creation, no seccomp compiler.
NOT_ON_EXEC = (
    *NOT_ON_RUN,
    "sandbox.images.store",
    "sandbox.runtime.container",
    "sandbox.rootless.seccomp",
    "sandbox.rootless.features",
)
BUDGET_RUN = 135  # measured 131 beyond the bare interpreter's own (135 before tty, cli/images)
BUDGET_EXEC = 127  # measured 123 (126 before tty left)


def _modules(stderr: str) -> list[str]:
    names = []
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                names.append(name)
    return names


def _interpreter_own() -> set[str]:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "pass"], capture_output=True, text=True
    )
    return set(_modules(done.stderr))


def _imported(env: SandboxEnv, *args: str) -> list[str]:
    done = env.run(*args, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    own = _interpreter_own()
    return [name for name in _modules(done.stderr) if name not in own]


def _loaded(names: list[str], forbidden: tuple[str, ...]) -> list[str]:
    return [n for n in names if n in forbidden or n.split(".")[0] in forbidden]


def test_run_imports_no_pull_hashing_or_thread_modules(
    sandbox_env: SandboxEnv, busybox_image: str
) -> None:
    args = ("run", "--rm", "--network", "none", busybox_image, "true")
    # The first run in a fresh runtime directory probes the host (cached per boot) and may
    # compile the seccomp filter (cached too): the steady state is the second.
    assert sandbox_env.run(*args).returncode == 0
    names = _imported(sandbox_env, *args)
    assert "sandbox.runtime.container" in names  # the count is real: a container ran
    assert _loaded(names, NOT_ON_RUN) == []
    assert len(names) <= BUDGET_RUN, (
        f"`sandbox run` imported {len(names)} modules (budget {BUDGET_RUN}): "
        + ", ".join(names[-40:])
    )


def test_exec_imports_neither_the_image_store_nor_the_creation_path(
    sandbox_env: SandboxEnv, busybox_image: str
) -> None:
    name = "lean-exec"
    started = sandbox_env.run(
        "run", "-d", "--name", name, "--network", "none", busybox_image, "sleep", "60"
    )
    assert started.returncode == 0, started.stderr
    try:
        names = _imported(sandbox_env, "exec", name, "true")
    finally:
        sandbox_env.run("rm", "-f", name)
    assert "sandbox.runtime.exec" in names
    assert _loaded(names, NOT_ON_EXEC) == []
    assert len(names) <= BUDGET_EXEC, (
        f"`sandbox exec` imported {len(names)} modules (budget {BUDGET_EXEC}): "
        + ", ".join(names[-40:])
    )


def _counting_newuidmap(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A PATH whose newuidmap logs each call, then runs the real (setuid) one."""
    real = shutil.which("newuidmap")
    if real is None:
        pytest.fail("newuidmap is not on PATH, though the newuidmap probe passed")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "newuidmap.log"
    wrapper = bin_dir / "newuidmap"
    wrapper.write_text(f'#!/bin/sh\necho "$1" >> {log}\nexec {real} "$@"\n')
    wrapper.chmod(stat.S_IRWXU)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}, log


def _container_dirs(env: SandboxEnv) -> set[str]:
    root = env.data_home / "sandbox" / "containers"
    return (
        {p.name for p in root.iterdir() if not p.name.startswith(".")} if root.exists() else set()
    )


def _user_namespaces(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_rm_of_files_all_our_own_needs_no_second_user_namespace(
    sandbox_env: SandboxEnv, busybox_image: str, tmp_path: Path
) -> None:
    env, log = _counting_newuidmap(tmp_path)
    before = _container_dirs(sandbox_env)
    # Root's files in the container are ours on the host; the overlay's work dir is mode 000.
    done = sandbox_env.run(
        "run", "--rm", "--network", "none", busybox_image, "sh", "-c", "echo x > /f", env=env
    )
    assert done.returncode == 0, done.stderr
    assert _user_namespaces(log) == 1  # the container's own, none for the removal
    assert _container_dirs(sandbox_env) == before


def test_rm_of_files_of_a_subordinate_id_still_removes_everything(
    sandbox_env: SandboxEnv, busybox_image: str, tmp_path: Path
) -> None:
    env, log = _counting_newuidmap(tmp_path)
    before = _container_dirs(sandbox_env)
    script = "mkdir -m 0700 /owned && touch /owned/f && chown -R 1000:1000 /owned"
    done = sandbox_env.run(
        "run", "--rm", "--network", "none", busybox_image, "sh", "-c", script, env=env
    )
    assert done.returncode == 0, done.stderr
    assert _user_namespaces(log) == 2  # the removal of /owned needs the mapping
    assert _container_dirs(sandbox_env) == before


def test_a_namespace_refused_while_the_mapping_is_written_is_reported_once_mapped() -> None:
    """The intermediate creates its namespaces while the parent runs newuidmap (init.py, step
    2): a refusal there reaches the parent as that error, after a mapping that went through."""
    from sandbox.errors import SandboxError
    from sandbox.rootless import idmap, userns

    mapping = idmap.for_current_user("auto")
    # Bit 0 is no namespace: unshare(2) refuses it (EINVAL), as it would a namespace limit.
    pid, channel = userns.spawn(mapping, lambda _channel: 0, meanwhile=1)
    try:
        with pytest.raises(SandboxError, match="cannot create the container's namespaces"):
            channel.expect("never sent")
    finally:
        channel.close()
        status = userns.wait_pid(pid)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 125
