"""Every command's --help shows examples (issue: command line polish)."""

from __future__ import annotations

from typing import Any

from sandbox.cli import main


def _commands(group: Any, prefix: str = "") -> list[tuple[str, Any]]:
    found = []
    for name, command in sorted(getattr(group, "commands", {}).items()):
        path = f"{prefix} {name}".strip()
        if getattr(command, "commands", None):
            found += _commands(command, path)
        else:
            found.append((path, command))
    return found


def test_every_command_has_examples_in_its_help() -> None:
    main._register()
    import typer

    root = typer.main.get_command(main.app)
    missing = [path for path, command in _commands(root) if "Example" not in (command.help or "")]
    assert missing == []
