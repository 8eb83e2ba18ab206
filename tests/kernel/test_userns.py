"""sandbox.rootless.userns and idmap against the real kernel, as an unprivileged user.

Each test forks a child into a new user namespace; the child reports what it observes over
the channel and the parent asserts on it (an assertion inside the child would only exit it).
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from sandbox.errors import LayerError, SandboxError
from sandbox.rootless import idmap, syscalls, userns
from sandbox.rootless.channel import Channel

pytestmark = pytest.mark.needs("userns")


def _observe(mapping: idmap.IdMapping, flags: int = 0) -> dict[str, Any]:
    """Run a child in a namespace with mapping; what it saw of itself."""

    def target(channel: Channel) -> int:
        with open("/proc/self/setgroups") as f:
            setgroups = f.read().strip()
        channel.send(
            "observed",
            uid_map=_read_map("uid_map"),
            gid_map=_read_map("gid_map"),
            ids=[os.getuid(), os.geteuid(), os.getgid(), os.getegid()],
            setgroups=setgroups,
        )
        return 0

    seen: list[dict[str, Any]] = []
    code = userns.run(mapping, target, flags=flags, on_message=lambda m, _fds: seen.append(m))
    assert code == 0
    assert len(seen) == 1
    return seen[0]


def _read_map(name: str) -> list[list[int]]:
    with open(f"/proc/self/{name}") as f:
        return [[int(x) for x in line.split()] for line in f if line.strip()]


@pytest.mark.needs("subids", "newuidmap")
def test_child_sees_own_uid_as_root_and_subordinate_range_above() -> None:
    name, uid, gid = idmap.current_user()
    subuids = idmap.read_subids(idmap.SUBUID, name, uid)
    subgids = idmap.read_subids(idmap.SUBGID, name, uid)
    mapping = idmap.for_current_user("subids")
    assert not mapping.single
    seen = _observe(mapping)
    expected_uids = [[0, uid, 1]]
    inside = 1
    for start, count in subuids:
        expected_uids.append([inside, start, count])
        inside += count
    assert seen["uid_map"] == expected_uids
    assert seen["gid_map"][0] == [0, gid, 1]
    assert seen["gid_map"][1] == [1, subgids[0][0], subgids[0][1]]
    assert seen["ids"] == [0, 0, 0, 0]
    assert seen["setgroups"] == "allow"


def test_single_mapping_writes_one_line() -> None:
    _, uid, gid = idmap.current_user()
    mapping = idmap.for_current_user("single")
    assert mapping.single
    seen = _observe(mapping)
    assert seen["uid_map"] == [[0, uid, 1]]
    assert seen["gid_map"] == [[0, gid, 1]]
    assert seen["ids"] == [0, 0, 0, 0]
    # An unprivileged process may write its gid_map only after denying setgroups.
    assert seen["setgroups"] == "deny"


def test_error_in_the_child_arrives_as_the_same_class() -> None:
    def target(channel: Channel) -> int:
        raise LayerError("cannot unpack layer", context="sha256:abc", hint="pull it again")

    with pytest.raises(LayerError) as caught:
        userns.run(idmap.for_current_user("single"), target)
    assert caught.value.message == "cannot unpack layer"
    assert caught.value.context == "sha256:abc"
    assert caught.value.hint == "pull it again"


def test_os_error_in_the_child_keeps_the_kernel_words() -> None:
    def target(channel: Channel) -> int:
        os.open("/nonexistent/file", os.O_RDONLY)
        return 0

    with pytest.raises(SandboxError) as caught:
        userns.run(idmap.for_current_user("single"), target)
    assert "No such file or directory" in str(caught.value)


def test_a_failure_of_ours_stops_the_child_instead_of_waiting_for_it(tmp_path: Any) -> None:
    finished = tmp_path / "finished"

    def target(channel: Channel) -> int:
        channel.send("progress")
        time.sleep(3)  # a long task, such as unpacking a layer
        finished.touch()
        return 0

    def refuse(_message: dict[str, Any], _fds: list[int]) -> None:
        raise ValueError("refused by the parent")

    with pytest.raises(ValueError):
        userns.run(idmap.for_current_user("single"), target, on_message=refuse)
    # Waiting for the child would have let it finish its task; it was stopped instead.
    assert not finished.exists()


def test_exit_status_of_the_target_is_returned() -> None:
    assert userns.run(idmap.for_current_user("single"), lambda channel: 7) == 7


def test_mount_namespace_is_private_to_the_child(tmp_path: Any) -> None:
    def target(channel: Channel) -> int:
        syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
        syscalls.mount("tmpfs", str(tmp_path), "tmpfs", 0, "size=1m")
        with open(tmp_path / "inside", "w") as f:
            f.write("x")
        channel.send("mounted", entries=sorted(os.listdir(tmp_path)))
        return 0

    seen: list[dict[str, Any]] = []
    userns.run(
        idmap.for_current_user("single"),
        target,
        flags=syscalls.CLONE_NEWNS,
        on_message=lambda m, _fds: seen.append(m),
    )
    assert seen[0]["entries"] == ["inside"]
    assert os.listdir(tmp_path) == []  # the tmpfs never appeared out here


@pytest.mark.needs("overlay_userns")
def test_overlay_probe_agrees_with_a_fresh_run() -> None:
    from sandbox.rootless import features

    result = features.probe("overlay_userns", use_cache=False)
    assert result.ok, result
