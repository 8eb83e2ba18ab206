"""`sandbox volume create|ls|rm`: named volumes (sandbox/volumes.py)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help="Manage named volumes (job caches, `-v NAME:/path`).\n\nExamples:\n\n"
        "  sandbox volume create cache\n\n  sandbox run -v cache:/cache busybox ls /cache\n\n"
        "  sandbox volume rm cache",
        no_args_is_help=True,
    )

    @group.command(
        "create",
        help="Create a named volume (run -v NAME:/path also creates it).\n\nExamples:\n\n"
        "  sandbox volume create cache",
    )
    def create(name: str = typer.Argument(..., help="Volume name.")) -> None:
        from sandbox import config, volumes

        print(volumes.create(config.load().data_root, name, exist_ok=False).name)

    @group.command(
        "ls", help="List named volumes.\n\nExamples:\n\n  sandbox volume ls --format json"
    )
    def ls(
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Only names."),
        fmt: str = typer.Option(None, "--format", help="json"),
    ) -> None:
        from sandbox import config, volumes
        from sandbox.cli import render

        found = volumes.list_volumes(config.load().data_root)
        if fmt == "json":
            render.json_out([{"Name": v.name, "Mountpoint": str(v.path)} for v in found])
        elif quiet:
            for v in found:
                print(v.name)
        else:
            render.table(("DRIVER", "VOLUME NAME"), [("local", v.name) for v in found])

    @group.command(
        "rm",
        help="Remove named volumes and their contents.\n\nExamples:\n\n  sandbox volume rm cache",
    )
    def rm(names: list[str] = typer.Argument(..., help="Volume names.")) -> None:
        from sandbox import config, volumes
        from sandbox.runtime.container import mapping_for

        settings = config.load()
        mapping = mapping_for(settings, None, lambda _m: None)
        for name in names:
            volumes.remove(settings.data_root, name, mapping)
            print(name)

    app.add_typer(group, name="volume")
