"""`sandbox config show|path`: the effective settings and where each value came from."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import typer

SHOW_HELP = """Print the effective configuration: every setting, its value, and where it came
from (default, a config file, or an environment variable).

Files: /etc/sandbox/config.yaml, then $XDG_CONFIG_HOME/sandbox/config.yaml (default
~/.config/sandbox/config.yaml); the user's file wins key by key.

Examples:

  sandbox config show

  sandbox config show --format json | jq -r .storage_driver.value
"""


def effective(settings: Any) -> dict[str, dict[str, Any]]:
    """{key: {"value": ..., "source": "default" | file path | "env VAR"}} for every setting."""
    from sandbox.codec import to_json

    result: dict[str, dict[str, Any]] = {}
    for field in dataclasses.fields(settings):
        if field.name == "sources":
            continue
        source = settings.sources.get(field.name)
        if source is None:
            source = "default"
            env = {"data_root": "XDG_DATA_HOME", "runtime_root": "XDG_RUNTIME_DIR"}
            var = env.get(field.name)
            if var is not None and os.path.isabs(os.environ.get(var, "")):
                source = f"env {var}"
                if field.name == "runtime_root" and not str(
                    getattr(settings, field.name)
                ).startswith(os.environ[var]):
                    source = f"default ({var} is not usable)"
        result[field.name] = {"value": to_json(getattr(settings, field.name)), "source": source}
    return result


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        name="config",
        help="Show sandbox's configuration.\n\nExamples:\n\n  sandbox config show\n\n"
        "  sandbox config path",
        no_args_is_help=True,
    )
    app.add_typer(group, name="config")

    @group.command("show", help=SHOW_HELP)
    def show(
        format_: str = typer.Option("table", "--format", help="table, json or yaml."),
    ) -> None:
        from sandbox import config
        from sandbox.cli import render
        from sandbox.errors import UsageError

        if format_ not in ("table", "json", "yaml"):
            raise UsageError(f"unknown --format {format_!r}", hint="use table, json or yaml")
        values = effective(config.load())
        if format_ == "json":
            render.json_out(values)
        elif format_ == "yaml":
            import yaml

            plain = {k: v["value"] for k, v in values.items()}
            print(yaml.safe_dump(plain, sort_keys=False).rstrip())
        else:
            rows = [
                (key, "(unset)" if v["value"] is None else _text(v["value"]), v["source"])
                for key, v in values.items()
            ]
            render.table(("KEY", "VALUE", "SOURCE"), rows)

    @group.command(
        "path",
        help="Print the configuration files sandbox reads, in order, and whether each "
        "exists.\n\nExamples:\n\n  sandbox config path",
    )
    def path() -> None:
        from sandbox import config

        for file in (config.SYSTEM_CONFIG, config.user_config_file()):
            print(f"{file}\t{'exists' if file.exists() else 'absent'}")


def _text(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "(empty)"
    return str(value)
