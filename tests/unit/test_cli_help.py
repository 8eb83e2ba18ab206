"""Every command's --help shows examples (issue: command line polish)."""

from __future__ import annotations

import importlib
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
    main._register([])
    import typer

    root = typer.main.get_command(main.app)
    missing = [path for path, command in _commands(root) if "Example" not in (command.help or "")]
    assert missing == []


def test_the_lazy_registration_table_names_every_command_and_its_module() -> None:
    """Each top-level command is registered by the module COMMAND_MODULES names for it, and
    every module's commands are in the table."""
    import typer

    seen: dict[str, str] = {}
    for module in main.ALL_MODULES:
        app = typer.Typer()
        importlib.import_module(f"sandbox.cli.{module}").register(app)
        for name in typer.main.get_group(app).commands:
            seen[name] = module
    assert seen == main.COMMAND_MODULES


def test_the_command_is_found_after_global_options() -> None:
    assert main._wanted_command(["--debug", "--log-level", "info", "run", "x"]) == "run"
    assert main._wanted_command(["--version"]) is None
