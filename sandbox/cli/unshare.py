"""`sandbox unshare`: a shell or command in the user's user namespace, as `podman unshare`.

Files in the image store and in containers belong to the user's subordinate ids; inside this
namespace they belong to "root" and friends, so they can be inspected and removed.
"""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command(
        "unshare",
        context_settings={"allow_interspersed_args": False},
        help="Run a command in your user namespace (ids mapped as in containers).\n\n"
        "Examples:\n\n  sandbox unshare cat /proc/self/uid_map\n\n"
        "  sandbox unshare rm -rf ~/.local/share/sandbox",
    )
    def unshare(
        command: list[str] = typer.Argument(None, help="Command (default: $SHELL)."),
    ) -> None:
        from sandbox import config
        from sandbox.runtime import unshare as engine

        code = engine.run(config.load(), list(command or ()))
        raise typer.Exit(code)
