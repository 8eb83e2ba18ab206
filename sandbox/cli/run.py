"""`sandbox run`: parse options into RunOptions and hand them to the runtime."""

from __future__ import annotations

import typer

RUN_EXAMPLES = """
Examples:

  sandbox run --rm busybox echo hello

  sandbox run -it --rm debian bash

  sandbox run --rm -v $PWD:/src:ro -w /src busybox ls

  sandbox run --rootfs ./rootfs /bin/sh
"""


def register(app: typer.Typer) -> None:
    @app.command(
        "run",
        # -h is --hostname here, as in podman run.
        context_settings={"help_option_names": ["--help"], "allow_interspersed_args": False},
        help="Run a command in a new container." + RUN_EXAMPLES,
    )
    def run(
        image: str = typer.Argument(..., help="Image name or id (with --rootfs: a directory)."),
        command: list[str] = typer.Argument(None, help="Command and arguments."),
        remove: bool = typer.Option(False, "--rm", help="Remove the container when it exits."),
        interactive: bool = typer.Option(False, "--interactive", "-i", help="Keep stdin open."),
        tty: bool = typer.Option(False, "--tty", "-t", help="Allocate a pseudo-terminal."),
        name: str = typer.Option(None, "--name", help="Name of the container."),
        env: list[str] = typer.Option([], "--env", "-e", help="Set KEY=VALUE (or copy KEY)."),
        env_file: list[str] = typer.Option([], "--env-file", help="Read KEY=VALUE lines."),
        workdir: str = typer.Option(None, "--workdir", "-w", help="Working directory inside."),
        user: str = typer.Option(None, "--user", "-u", help="USER[:GROUP], names or ids."),
        hostname: str = typer.Option(None, "--hostname", "-h", help="Container host name."),
        volume: list[str] = typer.Option([], "--volume", "-v", help="Bind HOSTPATH:PATH[:ro]."),
        tmpfs: list[str] = typer.Option([], "--tmpfs", help="Mount a tmpfs at PATH[:OPTS]."),
        read_only: bool = typer.Option(False, "--read-only", help="Read-only root filesystem."),
        entrypoint: str = typer.Option(None, "--entrypoint", help="Override the entrypoint."),
        init: bool = typer.Option(False, "--init", help="Run a reaper as PID 1."),
        rootfs: bool = typer.Option(
            False, "--rootfs", help="IMAGE is a root filesystem directory."
        ),
        userns: str = typer.Option(
            None, "--userns", help="auto, subids, or single (map only your own id)."
        ),
    ) -> None:
        from sandbox import config
        from sandbox.runtime import container
        from sandbox.spec import RunOptions

        if userns is not None and userns not in config.USERNS_MODES:
            from sandbox.errors import UsageError

            raise UsageError(
                f"invalid --userns {userns!r}", hint=f"use one of: {', '.join(config.USERNS_MODES)}"
            )
        options = RunOptions(
            image=image,
            command=tuple(command or ()),
            remove=remove,
            interactive=interactive,
            tty=tty,
            name=name,
            env=tuple(env),
            env_files=tuple(env_file),
            workdir=workdir,
            user=user,
            hostname=hostname,
            volumes=tuple(volume),
            tmpfs=tuple(tmpfs),
            read_only=read_only,
            entrypoint=entrypoint,
            init=init,
            rootfs=rootfs,
            userns=userns,
        )
        code = container.run(config.load(), options)
        raise typer.Exit(code)
