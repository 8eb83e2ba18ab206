"""Rendering for listings: plain aligned tables (cheap to import) and JSON."""

from __future__ import annotations

import datetime
import json
import re
import shlex
import sys
from collections.abc import Callable, Iterable, Sequence
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


def human_duration(seconds: float) -> str:
    """podman's (go-units') wording of a duration: "1 second", "About a minute", "3 days"."""
    if seconds < 1:
        return "Less than a second"
    if seconds < 60:
        whole = int(seconds)
        return f"{whole} second{'s' if whole != 1 else ''}"
    minutes = int(seconds // 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    for unit, size, below in (("hour", 1, 48), ("day", 24, 24 * 14), ("week", 24 * 7, 24 * 60)):
        if hours < below:
            return f"{hours // size} {unit}s"
    if hours < 24 * 365 * 2:
        return f"{hours // (24 * 30)} months"
    return f"{hours // (24 * 365)} years"


def _since(text: str | None) -> float | None:
    when = parse_time(text) if text else None
    if when is None:
        return None
    return max((datetime.datetime.now(datetime.UTC) - when).total_seconds(), 0.0)


def ago(text: str | None) -> str:
    seconds = _since(text)
    return "unknown" if seconds is None else f"{human_duration(seconds)} ago"


def command(args: Sequence[str], width: int = 30) -> str:
    text = shlex.join(args)
    return text if len(text) <= width else text[: width - 3] + "..."


def status(container: Container) -> str:
    if container.status == "running":
        seconds = _since(container.started_at)
        return "Up" if seconds is None else f"Up {human_duration(seconds)}"
    if container.status == "exited":
        code = "unknown" if container.exit_code is None else str(container.exit_code)
        return f"Exited ({code}) {ago(container.finished_at or container.created)}"
    if container.status == "unknown":  # its record is damaged or missing (state._unknown)
        return "Unknown (damaged record; sandbox rm removes it)"
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


def container_fields(c: Container) -> dict[str, Any]:
    """The names a --format template can use for a container (podman's, where they exist)."""
    return {
        "ID": c.short_id,
        "Id": c.id,
        "Names": c.name,
        "Name": c.name,
        "Image": c.image,
        "ImageID": c.image_id or "",
        "Command": command(c.command, 1 << 16),
        "Created": c.created,
        "CreatedAt": c.created,
        "RunningFor": ago(c.created),
        "Status": status(c),
        "State": c.status,
        "Pid": c.pid if c.status == "running" else 0,
        "ExitCode": "" if c.exit_code is None else c.exit_code,
        "Ports": ", ".join(c.ports),
    }


_FIELD = re.compile(r"{{\s*\.(\w+)\s*}}")


def template(fmt: str, rows: Sequence[dict[str, Any]]) -> None:
    """A small subset of Go templates: {{.Field}}, \\t and \\n; "table " adds a header."""
    fmt = fmt.replace("\\t", "\t").replace("\\n", "\n")
    with_header = fmt.startswith("table ")
    if with_header:
        fmt = fmt[len("table ") :]
    unknown = {m.group(1) for m in _FIELD.finditer(fmt)} - (set(rows[0]) if rows else set())
    if rows and unknown:
        from sandbox.errors import UsageError

        raise UsageError(
            f"unknown field(s) in --format: {', '.join(sorted(unknown))}",
            hint=f"fields: {', '.join(sorted(rows[0]))}",
        )
    lines = [_fill(fmt, row) for row in rows]
    if with_header:
        header = _FIELD.sub(lambda m: _header(m.group(1)), fmt)
        cells = [line.split("\t") for line in [header, *lines]]
        if all(len(c) == len(cells[0]) for c in cells):
            table(cells[0], cells[1:])
            return
        lines = [header, *lines]
    for line in lines:
        sys.stdout.write(line + "\n")


def _fill(fmt: str, row: dict[str, Any]) -> str:
    return _FIELD.sub(lambda m: str(row.get(m.group(1), "")), fmt)


def _header(field: str) -> str:
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", field).upper()


def filter_containers(containers: list[Container], filters: Sequence[str]) -> list[Container]:
    """--filter KEY=VALUE; the same key twice means either value, different keys all must hold."""
    wanted: dict[str, list[str]] = {}
    for item in filters:
        key, eq, value = item.partition("=")
        if not eq or key not in ("id", "name", "status", "image", "ancestor"):
            from sandbox.errors import UsageError

            raise UsageError(
                f"invalid --filter {item!r}", hint="use id=, name=, status= or image= (ancestor=)"
            )
        wanted.setdefault("image" if key == "ancestor" else key, []).append(value)

    def keep(c: Container) -> bool:
        checks: dict[str, Callable[[str], bool]] = {
            "id": lambda v: c.id.startswith(v),
            "name": lambda v: re.search(v, c.name) is not None,
            "status": lambda v: c.status == v,
            "image": lambda v: v in (c.image, c.image_id) or (c.image_id or "").startswith(v),
        }
        return all(any(checks[k](v) for v in values) for k, values in wanted.items())

    return [c for c in containers if keep(c)]
