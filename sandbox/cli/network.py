"""`sandbox port` (the ports a container publishes on the host) and `sandbox network
create|ls|inspect|rm` (named networks, sandbox/runtime/networks.py)."""

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

    _register_network(app)


def _register_network(app: typer.Typer) -> None:
    group = typer.Typer(
        help="Manage named networks: containers on one reach each other by name.\n\n"
        "Examples:\n\n  sandbox network create backend\n\n"
        "  sandbox run -d --name db --network backend busybox httpd -f -p 80\n\n"
        "  sandbox run --rm --network backend busybox wget -qO- http://db/",
        no_args_is_help=True,
    )

    @group.command(
        "create",
        help="Create a named network (a bridge in the user's rootless network namespace).\n\n"
        "Examples:\n\n  sandbox network create backend\n\n"
        "  sandbox network create --subnet 10.90.0.0/24 lab",
    )
    def create(
        name: str = typer.Argument(..., help="Network name."),
        subnet: str = typer.Option(None, "--subnet", help="IPv4 CIDR (default: 10.89.N.0/24)."),
    ) -> None:
        from sandbox import config
        from sandbox.runtime import networks

        print(networks.create(config.load().data_root, name, subnet).name)

    @group.command("ls", help="List named networks.\n\nExamples:\n\n  sandbox network ls")
    def ls(
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Only names."),
        fmt: str = typer.Option(None, "--format", help="json"),
    ) -> None:
        from sandbox import config
        from sandbox.cli import render
        from sandbox.runtime import networks

        found = networks.list_networks(config.load().data_root)
        if fmt == "json":
            render.json_out([n.to_json() for n in found])
        elif quiet:
            for n in found:
                print(n.name)
        else:
            render.table(
                ["NAME", "SUBNET", "GATEWAY", "BRIDGE"],
                [(n.name, n.subnet, n.gateway, n.bridge) for n in found],
            )

    @group.command(
        "inspect",
        help="Show networks as JSON, with their running containers and addresses.\n\n"
        "Examples:\n\n  sandbox network inspect backend",
    )
    def inspect(names: list[str] = typer.Argument(..., help="Network names.")) -> None:
        from sandbox import config
        from sandbox.cli import render
        from sandbox.runtime import networks

        settings = config.load()
        render.json_out(
            [networks.inspect(settings.data_root, config.runtime_root(), n) for n in names]
        )

    @group.command(
        "rm",
        help="Remove named networks (refused while containers, running or not, use them; "
        "-f removes those containers first). Removing the last one stops the rootless "
        "network namespace.\n\nExamples:\n\n  sandbox network rm backend\n\n"
        "  sandbox network rm -f backend",
    )
    def rm(
        names: list[str] = typer.Argument(..., help="Network names."),
        force: bool = typer.Option(
            False, "--force", "-f", help="Remove the containers that use them (killed first)."
        ),
    ) -> None:
        from sandbox import config
        from sandbox.runtime import container, networks
        from sandbox.runtime.state import ContainerStore

        settings = config.load()
        store = ContainerStore(settings.containers_root)
        for name in names:
            networks.lookup(settings.data_root, name)  # a missing one: its error, not a scan
            configured = networks.members(store, name)
            if force:
                for member in configured:
                    container.remove(settings, member, force=True, depend=True)
                configured = []
            print(networks.remove(settings.data_root, config.runtime_root(), name, configured).name)

    app.add_typer(group, name="network")
