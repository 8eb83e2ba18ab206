"""`sandbox port`: the ports a container publishes on the host."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command(
        "port",
        help="List a container's published ports.\n\nExamples:\n\n  sandbox port web\n\n"
        "  sandbox port web 80/tcp",
    )
    def port(
        container: str = typer.Argument(..., help="Name or id."),
        private: str = typer.Argument(None, help="Only this container port (PORT[/PROTO])."),
    ) -> None:
        from sandbox import config
        from sandbox.runtime.state import ContainerStore

        record = ContainerStore(config.load().containers_root).lookup(container)
        wanted = None
        if private is not None:
            number, _, proto = private.partition("/")
            wanted = f"{number}/{proto or 'tcp'}"
        for mapping in record.ports:
            inside, _, outside = mapping.partition(" -> ")
            if wanted is None:
                print(mapping)
            elif inside == wanted:
                print(outside)
