"""Container logs in the k8s-file format (what podman and CRI-O write), and reading them back.

One record a line: `<RFC 3339 time, ns> <stdout|stderr> <F|P> <text>`. F ends a line of the
container's output; P is a partial line (a line longer than the buffer, or output that stopped
without a newline), to be joined with what follows. The container's output is hostile: it is
written as bytes, newlines split records, and nothing in it is interpreted.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

MAX_PARTIAL = 16 * 1024  # a longer run without a newline is written as P records


def timestamp(now: float | None = None) -> bytes:
    ns = time.time_ns() if now is None else int(now * 1e9)
    seconds, nanos = divmod(ns, 1_000_000_000)
    base = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return f"{base:%Y-%m-%dT%H:%M:%S}.{nanos:09d}Z".encode()


class LogWriter:
    """Appends the container's streams to its log file, one record per line."""

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.pending: dict[str, bytes] = {}

    def write(self, stream: str, data: bytes) -> None:
        buffered = self.pending.get(stream, b"") + data
        records = []
        while True:
            newline = buffered.find(b"\n")
            if newline < 0:
                break
            line = buffered[:newline]
            while len(line) > MAX_PARTIAL:
                records.append((b"P", line[:MAX_PARTIAL]))
                line = line[MAX_PARTIAL:]
            records.append((b"F", line))
            buffered = buffered[newline + 1 :]
        while len(buffered) >= MAX_PARTIAL:
            records.append((b"P", buffered[:MAX_PARTIAL]))
            buffered = buffered[MAX_PARTIAL:]
        self.pending[stream] = buffered
        self._emit(stream, records)

    def flush(self, stream: str) -> None:
        """At the end of a stream, what is left without a newline is a partial record."""
        rest = self.pending.pop(stream, b"")
        if rest:
            self._emit(stream, [(b"P", rest)])

    def _emit(self, stream: str, records: list[tuple[bytes, bytes]]) -> None:
        if not records:
            return
        now = timestamp()
        data = b"".join(
            b"%s %s %s %s\n" % (now, stream.encode(), tag, text) for tag, text in records
        )
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def close(self) -> None:
        for stream in list(self.pending):
            self.flush(stream)
        os.close(self.fd)


@dataclasses.dataclass(frozen=True)
class Line:
    time: datetime.datetime
    stamp: str
    stream: str
    text: bytes  # without the newline
    complete: bool  # False when the output stopped here without a newline


_RECORD = re.compile(rb"^(\S+) (stdout|stderr) ([FP]) (.*)$", re.DOTALL)


def parse_time(text: str) -> datetime.datetime:
    # Python before 3.11 cannot parse nanoseconds: keep microseconds.
    head, _, frac = text.rstrip("Z").partition(".")
    value = datetime.datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}" if frac else head)
    return value.replace(tzinfo=datetime.UTC)


def read_lines(path: Path, offset: int = 0) -> tuple[list[Line], int]:
    """The complete output lines from offset on, and the offset to continue from.

    A P record is joined with the records of the same stream that follow; a trailing run of
    P records ends as an incomplete line only when nothing more can come (the caller decides).
    """
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    lines: list[Line] = []
    partial: dict[str, list[bytes]] = {}
    consumed = 0
    position = 0
    for raw in data.splitlines(keepends=True):
        position += len(raw)
        if not raw.endswith(b"\n"):
            break  # a record being written right now
        match = _RECORD.match(raw[:-1])
        if match is None:
            consumed = position
            continue
        stamp, stream, tag, text = match.groups()
        stream_name = stream.decode()
        if tag == b"P":
            partial.setdefault(stream_name, []).append(text)
            continue
        pieces = partial.pop(stream_name, [])
        stamp_text = stamp.decode()
        lines.append(
            Line(parse_time(stamp_text), stamp_text, stream_name, b"".join([*pieces, text]), True)
        )
        if not partial:
            consumed = position
    return lines, offset + consumed


def trailing_partials(path: Path, offset: int) -> list[Line]:
    """P records at the end of a finished container's log: output without a final newline."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return []
    result = []
    for raw in data.splitlines():
        match = _RECORD.match(raw)
        if match and match.group(3) == b"P":
            stamp = match.group(1).decode()
            result.append(
                Line(parse_time(stamp), stamp, match.group(2).decode(), match.group(4), False)
            )
    return result


def parse_since(text: str, now: datetime.datetime | None = None) -> datetime.datetime:
    """--since: an RFC 3339 time, a Unix timestamp, or a duration like 10m, 1h30m, 45s."""
    now = now or datetime.datetime.now(datetime.UTC)
    duration = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", text)
    if duration and text:
        hours, minutes, seconds = (float(g) if g else 0.0 for g in duration.groups())
        return now - datetime.timedelta(hours=hours, minutes=minutes, seconds=seconds)
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return datetime.datetime.fromtimestamp(float(text), datetime.UTC)
    value = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    return value


def follow(path: Path, offset: int, running: Callable[[], bool]) -> Iterator[Line]:
    """Lines as they are written, until running() says the container ended."""
    while True:
        lines, offset = read_lines(path, offset)
        yield from lines
        if not lines:
            if not running():
                lines, offset = read_lines(path, offset)
                yield from lines
                yield from trailing_partials(path, offset)
                return
            time.sleep(0.1)
