"""Container directories whose record is damaged or missing stay visible and removable.

A --rm container's records after the first are not fsync'ed, so a power loss can leave
container.json empty or cut short; a killed `rm` leaves a directory without one. `ps -a` lists
such a directory with status "unknown" and `rm ID` removes it; a directory whose removal is
under way (its remover holds an flock on it) is not listed.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import SandboxEnv, ok

pytestmark = pytest.mark.needs("userns", "subids", "newuidmap")


@pytest.fixture
def env(fresh_sandbox_env: SandboxEnv, busybox_tarball: Path) -> Iterator[SandboxEnv]:
    ok(fresh_sandbox_env.run("image", "import", busybox_tarball, "busybox"))
    yield fresh_sandbox_env


def _ps(env: SandboxEnv) -> list[dict[str, object]]:
    return list(json.loads(ok(env.run("ps", "-a", "--format", "json"))))


def _container(env: SandboxEnv, name: str) -> tuple[str, Path]:
    """A real, exited container with its files (root, spec, /etc files): (id, directory)."""
    done = env.run("run", "--network", "none", "--name", name, "busybox", "sh", "-c", "echo x > /f")
    assert done.returncode == 0, done.stderr
    cid = next(str(c["Id"]) for c in _ps(env) if c["Names"] == [name])
    directory = env.data_home / "sandbox" / "containers" / cid
    assert (directory / "container.json").is_file()
    return cid, directory


def _no_traceback(done: object) -> None:
    stderr = getattr(done, "stderr", "")
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr


@pytest.mark.parametrize("damage", ["truncated", "empty", "missing"])
def test_damaged_record_is_listed_as_unknown_and_rm_removes_it(env: SandboxEnv, damage: str):
    keep_id, _ = _container(env, "keep")
    cid, directory = _container(env, "torn")
    record = directory / "container.json"
    if damage == "truncated":  # what a power loss leaves of a record that was not synced
        data = record.read_bytes()
        record.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        record.write_bytes(b"")
    else:  # a killed rm: the record went first, the files stayed
        record.unlink()

    listed = {str(c["Id"]): c for c in _ps(env)}
    assert set(listed) == {keep_id, cid}, listed
    assert listed[cid]["State"] == "unknown"
    assert str(listed[cid]["Status"]).startswith("Unknown")
    assert listed[keep_id]["State"] == "exited" and listed[keep_id]["Names"] == ["keep"]
    table = env.run("ps", "-a")
    _no_traceback(table)
    assert cid[:12] in table.stdout and "Unknown" in table.stdout, table.stdout
    # Anything but rm refuses it, saying how to get rid of it (start would run a container
    # whose state nobody can record).
    for command in (("inspect", cid), ("logs", cid), ("start", cid), ("exec", cid, "true")):
        done = env.run(*command)
        _no_traceback(done)
        assert done.returncode == 125, (command, done.stdout, done.stderr)
        assert f"record of container {cid[:12]} is damaged" in done.stderr
        assert f"sandbox rm {cid[:12]}" in done.stderr

    done = env.run("rm", cid[:12])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == cid
    assert not directory.exists()
    assert [str(c["Id"]) for c in _ps(env)] == [keep_id]
    ok(env.run("rm", "keep"))
    assert os.listdir(env.data_home / "sandbox" / "containers") == [".lock"]


def test_a_directory_being_removed_is_not_listed(env: SandboxEnv):
    """rm unlinks the record first and then deletes the files, holding an flock on the
    directory: a listing meanwhile must not show a damaged container."""
    cid, directory = _container(env, "going")
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as ContainerStore.removing does
        (directory / "container.json").unlink()
        assert _ps(env) == []
    finally:
        os.close(fd)
    # The remover died (the flock went with it): now it is a leftover that rm can finish.
    (entry,) = _ps(env)
    assert entry["Id"] == cid and entry["State"] == "unknown"
    ok(env.run("rm", cid))
    assert not directory.exists()


def test_prune_removes_damaged_containers(env: SandboxEnv):
    cid, directory = _container(env, "torn")
    (directory / "container.json").write_bytes(b'{"id": "')
    done = env.run("container", "prune")
    assert done.returncode == 0, done.stderr
    assert cid in done.stdout
    assert not directory.exists()
