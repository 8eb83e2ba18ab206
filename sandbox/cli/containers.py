"""`sandbox ps` and `sandbox rm`: listing and removing containers."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command(
        "ps",
        help="List containers (running ones; -a for all).\n\n"
        "Examples:\n\n  sandbox ps -a\n\n  sandbox ps -a --format json",
    )
    def ps(
        all_: bool = typer.Option(False, "--all", "-a", help="Show exited containers too."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only ids."),
        format_: str = typer.Option(
            "table", "--format", help="table, json, or a template such as '{{.Names}} {{.Status}}'."
        ),
        filters: list[str] = typer.Option(
            [], "--filter", "-f", help="KEY=VALUE: id, name, status, image (repeatable)."
        ),
        last: int = typer.Option(-1, "--last", "-n", help="Only the N most recent."),
    ) -> None:
        from sandbox import config
        from sandbox.cli import render
        from sandbox.runtime import state
        from sandbox.runtime.state import ContainerStore

        settings = config.load()
        containers = ContainerStore(settings.containers_root).list()
        if any(state.abandoned(c) for c in containers):
            from sandbox.runtime import lifecycle

            containers = lifecycle.remove_abandoned(settings, containers)
        if not all_ and not any(f.startswith("status=") for f in filters) and last < 0:
            containers = [c for c in containers if c.status == "running"]
        containers = render.filter_containers(containers, filters)
        if last >= 0:
            containers = containers[:last]
        if format_ == "json":
            render.json_out([render.container_json(c) for c in containers])
            return
        if format_ != "table":
            render.template(format_, [render.container_fields(c) for c in containers])
            return
        if quiet:
            for c in containers:
                print(c.short_id)
            return
        rows = [
            (
                c.short_id,
                c.image,
                render.command(c.command),
                render.ago(c.created),
                render.status(c),
                c.name,
            )
            for c in containers
        ]
        render.table(("CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES"), rows)

    @app.command(
        "rm",
        help="Remove containers.\n\nExamples:\n\n  sandbox rm web\n\n"
        "  sandbox rm -f $(sandbox ps -aq)",
    )
    def rm(
        containers: list[str] = typer.Argument(..., help="Names or ids."),
        force: bool = typer.Option(False, "--force", "-f", help="Kill running ones first."),
        depend: bool = typer.Option(
            False,
            "--depend",
            help="Also remove the containers that join their network namespace (a pod's "
            "containers, for its infra container).",
        ),
        volumes: bool = typer.Option(
            False,
            "--volumes",
            "-v",
            help="Accepted for podman compatibility (no anonymous "
            "volumes exist: -v binds are the user's directories and are never removed).",
        ),
    ) -> None:
        from sandbox import config
        from sandbox.cli.main import print_error
        from sandbox.errors import SandboxError
        from sandbox.runtime import container

        settings = config.load()
        failed = 0
        for name in containers:
            try:
                removed = container.remove(settings, name, force=force, depend=depend)
                print(removed.id)
            except SandboxError as error:
                print_error(error)
                failed = error.exit_code
        if failed:
            raise typer.Exit(failed)
