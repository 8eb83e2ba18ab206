"""The k8s-file log format: writing records and reading lines back, partial lines included."""

from __future__ import annotations

import datetime
from pathlib import Path

from sandbox.runtime import logs


def test_lines_records_and_partials_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "ctr.log"
    writer = logs.LogWriter(path)
    writer.write("stdout", b"one\ntw")
    writer.write("stderr", b"err\n")
    writer.write("stdout", b"o\nno newline")
    writer.close()
    text = path.read_bytes().splitlines()
    assert [line.split(b" ", 1)[1] for line in text] == [
        b"stdout F one",
        b"stderr F err",
        b"stdout F two",
        b"stdout P no newline",
    ]
    lines, offset = logs.read_lines(path)
    assert [(line.stream, line.text) for line in lines] == [
        ("stdout", b"one"),
        ("stderr", b"err"),
        ("stdout", b"two"),
    ]
    partial = logs.trailing_partials(path, offset)
    assert [(p.text, p.complete) for p in partial] == [(b"no newline", False)]


def test_long_lines_are_split_into_partials_and_joined(tmp_path: Path) -> None:
    path = tmp_path / "ctr.log"
    writer = logs.LogWriter(path)
    long = b"x" * (logs.MAX_PARTIAL * 2 + 10)
    writer.write("stdout", long + b"\n")
    writer.close()
    assert path.read_bytes().count(b" P ") == 2
    lines, _ = logs.read_lines(path)
    assert [line.text for line in lines] == [long]


def test_hostile_output_stays_data(tmp_path: Path) -> None:
    path = tmp_path / "ctr.log"
    writer = logs.LogWriter(path)
    writer.write("stdout", b"2020-01-01T00:00:00Z stderr F forged\n\x1b[2J\r\n")
    writer.close()
    lines, _ = logs.read_lines(path)
    assert [(line.stream, line.text) for line in lines] == [
        ("stdout", b"2020-01-01T00:00:00Z stderr F forged"),
        ("stdout", b"\x1b[2J\r"),
    ]


def test_since_accepts_durations_timestamps_and_times() -> None:
    now = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)
    assert logs.parse_since("1h30m", now) == now - datetime.timedelta(hours=1, minutes=30)
    assert logs.parse_since("45s", now) == now - datetime.timedelta(seconds=45)
    assert logs.parse_since("2026-01-01T11:00:00Z", now).hour == 11
    assert logs.parse_since("0", now).year == 1970
