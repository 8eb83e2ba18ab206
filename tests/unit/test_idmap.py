"""Subordinate id files and the mapping built from them."""

from __future__ import annotations

from pathlib import Path

from sandbox.rootless.idmap import IdMapping, IdRange, _ranges, read_subids


def test_read_subids_by_name_or_uid_skipping_junk(tmp_path: Path) -> None:
    path = tmp_path / "subuid"
    path.write_text(
        "# c\nalice:100000:65536\nbob:200000:65536\n1000:300000:10\nbad\n"
        "alice:x:1\nalice:400000:0\n"
    )
    assert read_subids(path, "alice", 1000) == [(100000, 65536), (300000, 10)]
    assert read_subids(path, "carol", 1001) == []
    assert read_subids(tmp_path / "missing", "alice", 1000) == []


def test_ranges_put_the_user_at_0_and_subids_after() -> None:
    ranges = _ranges(1000, [(100000, 65536), (300000, 10)])
    assert ranges == (IdRange(0, 1000, 1), IdRange(1, 100000, 65536), IdRange(65537, 300000, 10))
    mapping = IdMapping(ranges, ranges)
    assert mapping.host_uid(0) == 1000
    assert mapping.host_uid(42) == 100041
    assert mapping.host_uid(65537) == 300000
    assert mapping.host_uid(70000) is None
    assert mapping.uid_count == 65547
