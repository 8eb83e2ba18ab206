"""`sandbox oci spec`: OCI runtime-spec config.json out of sandbox (sandbox/oci/spec.py)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help="OCI runtime spec: config.json templates and a container's config.\n\n"
        "Examples:\n\n  sandbox oci spec --rootless\n\n  sandbox oci spec --from web\n\n"
        "  sandbox run --bundle ./bundle",
        no_args_is_help=True,
    )

    @group.command(
        "spec",
        help="Write a config.json template into the bundle directory (as `runc spec` does), "
        "or print a container's config.json with --from.\n\nExamples:\n\n"
        "  sandbox oci spec --rootless --bundle ./bundle\n\n  sandbox oci spec --from web",
    )
    def spec(
        rootless: bool = typer.Option(
            False, "--rootless", help="A template for a rootless container (a user namespace)."
        ),
        from_: str = typer.Option(None, "--from", help="Print this container's config.json."),
        bundle: str = typer.Option(".", "--bundle", "-b", help="Where to write config.json."),
    ) -> None:
        import json
        import os
        from pathlib import Path

        from sandbox.errors import UsageError
        from sandbox.oci import spec as oci

        if from_ is not None:
            from sandbox import config
            from sandbox.runtime.state import ContainerStore

            store = ContainerStore(config.load().containers_root)
            container = store.lookup(from_)
            data = oci.for_container(store, container.id)
            print(json.dumps(data, indent=2))
            return
        path = Path(bundle) / oci.CONFIG
        if path.exists():
            raise UsageError(f"{path} exists already", hint="remove it, or give another --bundle")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as e:
            raise UsageError(f"cannot write {path}", context=e.strerror) from e
        with os.fdopen(fd, "w") as f:
            json.dump(oci.template(rootless=rootless), f, indent=2)
            f.write("\n")

    app.add_typer(group, name="oci")
