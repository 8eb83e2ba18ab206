"""Rendering for listings: plain aligned tables (cheap to import) and JSON."""

from __future__ import annotations

import datetime
import json
import shlex
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from sandbox.runtime.state import Container


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    rows = [tuple(str(cell) for cell in row) for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    for row in [tuple(headers), *rows]:
        line = "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        sys.stdout.write(line.rstrip() + "\n")


def json_out(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def parse_time(text: str) -> datetime.datetime | None:
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when


def ago(text: str | None) -> str:
    when = parse_time(text) if text else None
    if when is None:
        return "unknown"
    seconds = int((datetime.datetime.now(datetime.UTC) - when).total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''} ago"
    return f"{max(seconds, 0)} seconds ago"


def command(args: Sequence[str], width: int = 30) -> str:
    text = shlex.join(args)
    return text if len(text) <= width else text[: width - 3] + "..."


def status(container: Container) -> str:
    if container.status == "running":
        return f"Up {ago(container.started_at).removesuffix(' ago')}"
    if container.status == "exited":
        code = "unknown" if container.exit_code is None else str(container.exit_code)
        return f"Exited ({code}) {ago(container.finished_at or container.created)}"
    return "Created"


def container_json(c: Container) -> dict[str, Any]:
    return {
        "Id": c.id,
        "Names": [c.name],
        "Image": c.image,
        "ImageID": c.image_id,
        "Command": list(c.command),
        "Created": c.created,
        "State": c.status,
        "Status": status(c),
        "Pid": c.pid if c.status == "running" else 0,
        "ExitCode": c.exit_code,
        "OOMKilled": c.oom_killed,
        "StartedAt": c.started_at,
        "ExitedAt": c.finished_at,
        "AutoRemove": c.remove,
    }
