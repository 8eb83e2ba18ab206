"""`sandbox dev`: persistent scratch environments (sandbox/dev.py)."""

from __future__ import annotations

from pathlib import Path

import typer

DEV_HELP = """Enter a persistent scratch environment, created on first use.

  sandbox dev [NAME] [-- CMD...]        enter NAME (default: the project's directory name)
  sandbox dev ls                         list environments
  sandbox dev stop NAME | rm NAME
  sandbox dev snapshot NAME [TAG]        save the environment's layer
  sandbox dev rollback NAME TAG          restore it (the environment must be stopped)
  sandbox dev diff NAME                  what changed against the image

Examples:

  sandbox dev --image debian scratch

  sandbox dev scratch -- make test

  sandbox dev snapshot scratch clean && sandbox dev stop scratch && \\
  sandbox dev rollback scratch clean
"""

SUBCOMMANDS = ("ls", "stop", "rm", "snapshot", "rollback", "diff")


def register(app: typer.Typer) -> None:
    @app.command(
        "dev",
        help=DEV_HELP,
        context_settings={"allow_interspersed_args": False},
    )
    def dev(
        args: list[str] = typer.Argument(None, help="NAME [-- CMD...], or a subcommand."),
        image: str = typer.Option(None, "--image", help="Image (default: sandbox.yaml's)."),
        file: Path = typer.Option(None, "--file", "-f", help="The project file."),
    ) -> None:
        import sys

        from sandbox import config, dev, project
        from sandbox.errors import ConfigError, UsageError

        settings = config.load()
        words = list(args or [])
        if words and words[0] in SUBCOMMANDS:
            _subcommand(settings, words[0], words[1:])
            return
        command: tuple[str, ...] = ()
        if "--" in words:
            at = words.index("--")
            words, command = words[:at], tuple(words[at + 1 :])
        if len(words) > 1:
            raise UsageError(
                f"unexpected arguments {' '.join(words[1:])}",
                hint="sandbox dev NAME -- COMMAND [ARG...]",
            )
        proj = None
        if file is not None:
            proj = project.load(file)
        else:
            try:
                found = project.find()
            except ConfigError:
                found = None  # fine with --image, or when the environment exists
            if found is not None:
                proj = project.load(found)
        name = words[0] if words else (proj.directory.name if proj else "default")
        dev.ensure_running(settings, name, image=image, project=proj)
        tty = not command and sys.stdin.isatty()
        raise typer.Exit(dev.enter(settings, name, command, tty=tty))


def _subcommand(settings: object, verb: str, rest: list[str]) -> None:
    from sandbox import dev
    from sandbox.cli import render
    from sandbox.config import Settings
    from sandbox.errors import UsageError

    assert isinstance(settings, Settings)
    wanted = {
        "ls": (0, 0),
        "stop": (1, 1),
        "rm": (1, 1),
        "snapshot": (1, 2),
        "rollback": (2, 2),
        "diff": (1, 1),
    }[verb]
    if not wanted[0] <= len(rest) <= wanted[1]:
        raise UsageError(f"wrong arguments for 'sandbox dev {verb}'", hint="see sandbox dev --help")
    if verb == "ls":
        rows = [
            (e.name, e.container.image, e.status, ", ".join(dev.snapshots(settings, e.name)))
            for e in dev.list_environments(settings)
        ]
        render.table(("NAME", "IMAGE", "STATUS", "SNAPSHOTS"), rows)
    elif verb == "stop":
        dev.stop(settings, rest[0])
        print(rest[0])
    elif verb == "rm":
        dev.remove(settings, rest[0])
        print(rest[0])
    elif verb == "snapshot":
        print(dev.snapshot(settings, rest[0], rest[1] if len(rest) > 1 else None))
    elif verb == "rollback":
        dev.rollback(settings, rest[0], rest[1])
        print(f"{rest[0]} rolled back to {rest[1]}")
    else:
        for kind, path in dev.diff(settings, rest[0]):
            print(f"{kind} {path}")
