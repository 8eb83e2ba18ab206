"""`sandbox job JOB`: run a sandbox.yaml job's steps in a fresh container (sandbox/jobs.py)."""

from __future__ import annotations

from pathlib import Path

import typer

JOB_HELP = """Run a job from sandbox.yaml: its steps, in order, in one fresh container.

Stops at the first failing step and exits with its code. Never prompts. With --json-events,
stdout carries one JSON event per line (pull, start, step_start, step_end, exit, resources)
and the steps' output goes to stderr.

Examples:

  sandbox job test

  sandbox job -f ci/sandbox.yaml --json-events build > events.jsonl

  sandbox job --list
"""


def register(app: typer.Typer) -> None:
    @app.command("job", help=JOB_HELP)
    def job(
        name: str = typer.Argument(None, help="The job to run."),
        file: Path = typer.Option(None, "--file", "-f", help="The project file."),
        json_events: bool = typer.Option(
            False, "--json-events", help="JSON events on stdout; step output on stderr."
        ),
        color: str = typer.Option("auto", "--color", help="auto, always or never."),
        pull: str = typer.Option("missing", "--pull", help="always, missing, never or newer."),
        list_jobs: bool = typer.Option(False, "--list", help="List the jobs and exit."),
    ) -> None:
        import sys

        from sandbox import config, jobs, project
        from sandbox.errors import UsageError

        proj = project.load(file)
        if list_jobs:
            for job_name, j in proj.jobs.items():
                print(f"{job_name}\t{len(j.steps)} step(s)")
            return
        if name is None:
            known = ", ".join(proj.jobs) or "(none)"
            raise UsageError("no job named", hint=f"sandbox job JOB; jobs in {proj.path}: {known}")
        if color not in ("auto", "always", "never"):
            raise UsageError(f"invalid --color {color!r}", hint="use auto, always or never")
        out = sys.stderr if json_events else sys.stdout
        force = None if color == "auto" else color == "always"
        result = jobs.run(
            config.load(),
            proj,
            name,
            events=jobs.Events(sys.stdout if json_events else None),
            out=out,
            style=jobs.Style.detect(out, force),
            pull=pull,
        )
        raise typer.Exit(result.exit_code)
