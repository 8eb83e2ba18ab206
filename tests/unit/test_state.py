"""Container records: unique names, atomic records, reconciliation with the kernel."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandbox.errors import ContainerError, ContainerNotFound, UsageError
from sandbox.runtime import state
from sandbox.runtime.state import Container, ContainerStore


def make(store: ContainerStore, name: str, **fields: object) -> Container:
    return store.create(
        Container(
            id=store.new_id(),
            name=name,
            image="img",
            image_id=None,
            command=("true",),
            created=state.now(),
            **fields,
        )
    )


def test_names_are_unique_and_lookup_takes_names_ids_and_prefixes(tmp_path: Path) -> None:
    store = ContainerStore(tmp_path)
    a = make(store, "a")
    with pytest.raises(UsageError, match="already in use"):
        make(store, "a")
    assert store.lookup("a") == a
    assert store.lookup(a.id) == a
    assert store.lookup(a.id[:8]) == a
    with pytest.raises(ContainerNotFound):
        store.lookup("zzz")


def test_ambiguous_prefix_is_an_error(tmp_path: Path) -> None:
    store = ContainerStore(tmp_path)
    first = make(store, "a")
    store.create(
        Container(
            id=first.id[:4] + "f" * 60,
            name="b",
            image="i",
            image_id=None,
            command=(),
            created=state.now(),
        )
    )
    with pytest.raises(ContainerError, match="several"):
        store.lookup(first.id[:4])


def test_running_record_with_a_dead_pid_reads_as_exited(tmp_path: Path) -> None:
    store = ContainerStore(tmp_path)
    me = make(store, "me")
    alive = store.update(
        me,
        status="running",
        pid=os.getpid(),
        pid_start=state.process_start_time(os.getpid()) or 0,
        boot_id=state.boot_id(),
    )
    assert store.lookup("me").status == "running"
    store.update(alive, pid_start=alive.pid_start + 1)  # the pid was reused by another process
    assert store.lookup("me").status == "exited"
    store.update(alive, boot_id="another-boot")
    assert store.lookup("me").status == "exited"


def test_damaged_or_missing_records_are_listed_as_unknown(tmp_path: Path) -> None:
    """A torn record (power loss) or none (a killed rm) is listed, so rm can remove it;
    a directory being created (dot name) or removed (flock held) is not."""
    import fcntl

    store = ContainerStore(tmp_path)
    make(store, "good")
    (tmp_path / ("0" * 64)).mkdir()
    (tmp_path / ("0" * 64) / state.RECORD).write_text("{not json")
    (tmp_path / ("1" * 64)).mkdir()
    (tmp_path / f".new-{'2' * 64}").mkdir()
    (tmp_path / ("3" * 64)).mkdir()
    held = os.open(tmp_path / ("3" * 64), os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        listed = {c.id: c for c in store.list()}
    finally:
        os.close(held)
    assert sorted(c.name for c in listed.values()) == ["", "", "good"]
    assert {i for i, c in listed.items() if c.status == "unknown"} == {"0" * 64, "1" * 64}
    with pytest.raises(ContainerError, match="damaged"):
        store.lookup("000")
    assert store.lookup("000", damaged=True).status == "unknown"
    make(store, "next")  # a create (under the lock) sweeps what a killed create left
    assert not (tmp_path / f".new-{'2' * 64}").exists()


def test_process_start_time_handles_spaces_in_comm() -> None:
    assert state.process_start_time(os.getpid()) is not None
    assert state.process_start_time(2**22 + 12345) is None


def test_remove_tree_opens_up_our_own_closed_directories(tmp_path: Path) -> None:
    """What an overlay leaves behind (work/work mode 000, a read-only directory of the
    container's root) goes without a user namespace when every file is the caller's."""
    top = tmp_path / "ctr"
    (top / "work" / "work").mkdir(parents=True)
    (top / "work" / "work" / "index").mkdir()
    (top / "upper" / "ro").mkdir(parents=True)
    (top / "upper" / "ro" / "file").write_text("x")
    (top / "upper" / "ro").chmod(0o500)
    (top / "work" / "work").chmod(0)
    state.remove_tree(top)
    assert not top.exists()


def test_generated_names_are_adjective_noun() -> None:
    from sandbox.runtime import names

    drawn = {names.generate() for _ in range(200)}
    assert len(drawn) > 100
    assert all(n.count("_") == 1 and n.replace("_", "").isalpha() for n in drawn)
