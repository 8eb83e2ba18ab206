"""`sandbox doctor`: check everything a rootless container needs, and say how to fix what lacks.

Exit status 0 when nothing failed (warnings allowed), 1 when a check failed. The checks and
their severities live in sandbox/doctor.py; this module only renders them.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from sandbox.doctor import Report

DOCTOR_HELP = """Check this host for rootless containers: each check ok, warning or failed,
with the command or file edit that fixes it.

Exits 1 when a check failed (with --format json too), 0 otherwise.

Examples:

  sandbox doctor

  sandbox doctor --fresh

  sandbox doctor --format json | jq '.checks[] | select(.status != "ok")'
"""

_MARKS = {"ok": "ok  ", "warning": "WARN", "failed": "FAIL"}


def register(app: typer.Typer) -> None:
    @app.command("doctor", help=DOCTOR_HELP)
    def doctor(
        format_: str = typer.Option("text", "--format", help="text or json."),
        fresh: bool = typer.Option(
            False, "--fresh", help="Ignore probe results cached for this boot."
        ),
        check: list[str] = typer.Option(
            [], "--check", help="Run only this check (repeatable); names as in --format json."
        ),
    ) -> None:
        from sandbox import doctor as checks
        from sandbox.cli import render
        from sandbox.errors import UsageError
        from sandbox.rootless import features

        if format_ not in ("text", "json"):
            raise UsageError(f"unknown --format {format_!r}", hint="use text or json")
        unknown = [name for name in check if name not in features.NAMES]
        if unknown:
            raise UsageError(
                f"unknown check {', '.join(unknown)}", hint=f"known: {', '.join(features.NAMES)}"
            )
        report = checks.run(check or None, use_cache=not fresh)
        if format_ == "json":
            render.json_out(checks.as_json(report))
        else:
            _print(report)
        raise typer.Exit(1 if report.failed else 0)


def _print(report: Report) -> None:
    out = sys.stdout
    width = max(len(c.title) for c in report.checks)
    for c in report.checks:
        out.write(f"{_MARKS[c.status]}  {c.title.ljust(width)}  {c.detail}\n")
        if c.fix:
            out.write(f"      {' ' * width}  fix: {c.fix}\n")
    counts = report.counts()
    summary = f"{counts['ok']} ok, {counts['warning']} warnings, {counts['failed']} failed"
    if not report.run_possible:
        out.write(f"\n{summary}: sandbox run cannot start containers on this host\n")
    elif report.failed:
        out.write(f"\n{summary}: containers run, but not as they should (see failed checks)\n")
    else:
        out.write(f"\n{summary}: sandbox run works here\n")
