"""Lifecycle commands: start, stop, kill, wait, restart, rename, exec, logs, top, container prune,
pause and unpause."""

# No `from __future__ import annotations`: typer evaluates every option's annotation, and
# strings cost an eval each (~4 ms for run's fifty options on every start).

from collections.abc import Callable

import typer

_EXEC_SETTINGS = {"help_option_names": ["--help"], "allow_interspersed_args": False}


def _each(names: list[str], action: Callable[[str], object]) -> None:
    """Run action on every name; report each failure and exit with the last error's code."""
    from sandbox.cli.main import print_error
    from sandbox.errors import SandboxError

    failed = 0
    for name in names:
        try:
            action(name)
        except SandboxError as error:
            print_error(error)
            failed = error.exit_code
    if failed:
        raise typer.Exit(failed)


def register(app: typer.Typer) -> None:
    register_copy(app)
    register_diff(app)
    register_attach(app)
    register_commit(app)
    container_app = typer.Typer(help="Manage containers.", no_args_is_help=True)
    app.add_typer(container_app, name="container")

    @app.command(
        "start",
        help="Start created or stopped containers in the background.\n\n"
        "Examples:\n\n  sandbox start web\n\n  sandbox start -a job",
    )
    def start(
        containers: list[str] = typer.Argument(..., help="Names or ids."),
        attach: bool = typer.Option(
            False, "--attach", "-a", help="Run in the foreground and exit with its status."
        ),
    ) -> None:
        from sandbox import config
        from sandbox.runtime import lifecycle

        settings = config.load()
        if attach:
            if len(containers) != 1:
                from sandbox.errors import UsageError

                raise UsageError("--attach takes exactly one container")
            raise typer.Exit(lifecycle.start_attached(settings, containers[0]))
        _each(containers, lambda n: print(lifecycle.start(settings, n).name))

    @app.command(
        "stop",
        help="Stop containers: the image's stop signal (SIGTERM), then SIGKILL."
        "\n\nExamples:\n\n  sandbox stop web\n\n  sandbox stop -t 2 web",
    )
    def stop(
        containers: list[str] = typer.Argument(..., help="Names or ids."),
        timeout: float = typer.Option(10, "--time", "-t", help="Seconds before SIGKILL."),
    ) -> None:
        from sandbox import config
        from sandbox.runtime import lifecycle

        settings = config.load()
        _each(containers, lambda n: (lifecycle.stop(settings, n, timeout), print(n)))

    @app.command(
        "kill",
        help="Send a signal (default SIGKILL) to containers.\n\n"
        "Examples:\n\n  sandbox kill web\n\n  sandbox kill -s HUP web",
    )
    def kill(
        containers: list[str] = typer.Argument(..., help="Names or ids."),
        signal_: str = typer.Option("KILL", "--signal", "-s", help="Name or number."),
    ) -> None:
        from sandbox import config
        from sandbox.runtime import lifecycle

        settings = config.load()
        number = lifecycle.parse_signal(signal_)
        _each(containers, lambda n: print(lifecycle.kill(settings, n, number).name))

    @app.command(
        "wait",
        help="Wait for containers to exit; print their exit codes.\n\n"
        "Examples:\n\n  sandbox wait job",
    )
    def wait(containers: list[str] = typer.Argument(..., help="Names or ids.")) -> None:
        from sandbox import config
        from sandbox.runtime import lifecycle

        settings = config.load()

        def one(name: str) -> None:
            code = lifecycle.wait(settings, name)
            print(-1 if code is None else code, flush=True)

        _each(containers, one)

    @app.command(
        "restart", help="Stop, then start containers.\n\nExamples:\n\n  sandbox restart web"
    )
    def restart(
        containers: list[str] = typer.Argument(..., help="Names or ids."),
        timeout: float = typer.Option(10, "--time", "-t", help="Seconds before SIGKILL."),
    ) -> None:
        from sandbox import config
        from sandbox.runtime import lifecycle

        settings = config.load()
        _each(containers, lambda n: print(lifecycle.restart(settings, n, timeout).name))

    @app.command("rename", help="Rename a container.\n\nExamples:\n\n  sandbox rename old new")
    def rename(
        container: str = typer.Argument(..., help="Name or id."),
        new_name: str = typer.Argument(..., help="The new name."),
    ) -> None:
        from sandbox import config
        from sandbox.runtime import lifecycle

        lifecycle.rename(config.load(), container, new_name)

    @app.command(
        "exec",
        context_settings=_EXEC_SETTINGS,
        help="Run a command in a running container.\n\nExamples:\n\n"
        "  sandbox exec web ps\n\n  sandbox exec -it web sh\n\n"
        "  sandbox exec -u nobody -w /tmp web id",
    )
    def exec_(
        container: str = typer.Argument(..., help="Name or id."),
        command: list[str] = typer.Argument(..., help="Command and arguments."),
        interactive: bool = typer.Option(False, "--interactive", "-i", help="Keep stdin open."),
        tty: bool = typer.Option(False, "--tty", "-t", help="Allocate a pseudo-terminal."),
        detach: bool = typer.Option(False, "--detach", "-d", help="Run in the background."),
        env: list[str] = typer.Option([], "--env", "-e", help="Set KEY=VALUE (or copy KEY)."),
        env_file: list[str] = typer.Option([], "--env-file", help="Read KEY=VALUE lines."),
        workdir: str = typer.Option(None, "--workdir", "-w", help="Working directory inside."),
        user: str = typer.Option(None, "--user", "-u", help="USER[:GROUP], names or ids."),
    ) -> None:
        from sandbox import config
        from sandbox.runtime import exec as engine

        options = engine.ExecOptions(
            command=tuple(command),
            interactive=interactive,
            tty=tty,
            detach=detach,
            env=tuple(env),
            env_files=tuple(env_file),
            workdir=workdir,
            user=user,
        )
        raise typer.Exit(engine.run(config.load(), container, options))

    @app.command(
        "logs",
        help="Show a detached container's output.\n\nExamples:\n\n"
        "  sandbox logs web\n\n  sandbox logs -f --tail 10 web\n\n"
        "  sandbox logs --since 5m -t web",
    )
    def logs(
        container: str = typer.Argument(..., help="Name or id."),
        follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new output."),
        since: str = typer.Option(None, "--since", help="Only output since TIME or DURATION."),
        tail: int = typer.Option(-1, "--tail", help="Only the last N lines (-1: all)."),
        timestamps: bool = typer.Option(False, "--timestamps", "-t", help="Show times."),
    ) -> None:
        from sandbox import config

        _print_logs(
            config.load(), container, follow=follow, since=since, tail=tail, timestamps=timestamps
        )

    @app.command(
        "top", help="Show a running container's processes.\n\nExamples:\n\n  sandbox top web"
    )
    def top(container: str = typer.Argument(..., help="Name or id.")) -> None:
        from sandbox import config
        from sandbox.cli import render
        from sandbox.runtime import lifecycle

        rows = [
            (p.pid, p.ppid, p.user, p.state, p.host_pid, p.command)
            for p in lifecycle.top(config.load(), container)
        ]
        render.table(
            ("PID", "PPID", "UID", "STATE", "HOST PID", "COMMAND"),
            [tuple(map(str, row)) for row in rows],
        )

    @container_app.command(
        "prune",
        help="Remove every container that is not running.\n\nExamples:\n\n"
        "  sandbox container prune",
    )
    def prune() -> None:
        from sandbox import config
        from sandbox.runtime import lifecycle

        for c in lifecycle.prune(config.load()):
            print(c.id)

    @app.command(
        "pause",
        help="Pause containers (needs the cgroup v2 freezer).\n\nExamples:\n\n  sandbox pause web",
    )
    def pause(containers: list[str] = typer.Argument(..., help="Names or ids.")) -> None:
        from sandbox import config
        from sandbox.runtime import lifecycle

        settings = config.load()
        _each(containers, lambda n: print(lifecycle.freeze(settings, n, True).name))

    @app.command("unpause", help="Resume paused containers.\n\nExamples:\n\n  sandbox unpause web")
    def unpause(containers: list[str] = typer.Argument(..., help="Names or ids.")) -> None:
        from sandbox import config
        from sandbox.runtime import lifecycle

        settings = config.load()
        _each(containers, lambda n: print(lifecycle.freeze(settings, n, False).name))


def _print_logs(
    settings: object,
    name_or_id: str,
    *,
    follow: bool,
    since: str | None,
    tail: int,
    timestamps: bool,
) -> None:
    """stdout records to our stdout and stderr records to our stderr, as podman does."""
    import sys

    from sandbox.config import Settings
    from sandbox.errors import UsageError
    from sandbox.runtime import logs, monitor
    from sandbox.runtime.state import ContainerStore

    assert isinstance(settings, Settings)
    store = ContainerStore(settings.containers_root)
    container = store.lookup(name_or_id)
    path = monitor.log_path(store, container.id)
    try:
        cutoff = logs.parse_since(since) if since else None
    except ValueError as e:
        raise UsageError(
            f"invalid --since {since!r}",
            hint="use a duration like 10m or a time like 2024-01-02T15:04:05Z",
        ) from e
    lines, offset = logs.read_lines(path)
    alive = container.status == "running"
    if not alive:
        lines += logs.trailing_partials(path, offset)
    if cutoff is not None:
        lines = [line for line in lines if line.time >= cutoff]
    if tail >= 0:
        lines = lines[-tail:] if tail else []

    def show(line: logs.Line) -> None:
        out = sys.stdout.buffer if line.stream == "stdout" else sys.stderr.buffer
        prefix = line.stamp.encode() + b" " if timestamps else b""
        out.write(prefix + line.text + (b"\n" if line.complete else b""))
        out.flush()

    for line in lines:
        show(line)
    if follow and alive:

        def running() -> bool:
            try:
                return store.lookup(container.id).status == "running"
            except Exception:
                return False

        for line in logs.follow(path, offset, running):
            show(line)


def register_copy(app: typer.Typer) -> None:
    @app.command(
        "cp",
        help="Copy files between a container and the host.\n\nExamples:\n\n"
        "  sandbox cp web:/etc/hostname .\n\n  sandbox cp ./site web:/var/www\n\n"
        "Symlinks inside the container resolve inside its root: a copy never "
        "reaches the host through one.",
    )
    def cp(
        source: str = typer.Argument(..., help="CONTAINER:PATH or a host path."),
        destination: str = typer.Argument(..., help="CONTAINER:PATH or a host path."),
    ) -> None:
        from sandbox import config
        from sandbox.runtime import copy

        copy.copy(config.load(), source, destination)


def register_diff(app: typer.Typer) -> None:
    @app.command(
        "diff",
        help="List the files a container added (A), changed (C) or deleted "
        "(D).\n\nExamples:\n\n  sandbox diff web\n\n  sandbox diff --format json web",
    )
    def diff(
        container: str = typer.Argument(..., help="Name or id."),
        format_: str = typer.Option("table", "--format", help="table or json."),
    ) -> None:
        from sandbox import config
        from sandbox.cli import render
        from sandbox.runtime import changes

        found = changes.diff(config.load(), container)
        if format_ == "json":
            render.json_out([{"Kind": kind, "Path": path} for kind, path in found])
            return
        for kind, path in found:
            print(f"{kind} {path}")


def register_attach(app: typer.Typer) -> None:
    @app.command(
        "attach",
        help="Attach to a detached container's output and input.\n\n"
        "With a terminal, Ctrl-P Ctrl-Q detaches and leaves it running.\n\n"
        "Examples:\n\n  sandbox attach web\n\n  sandbox attach --no-stdin web",
    )
    def attach(
        container: str = typer.Argument(..., help="Name or id."),
        no_stdin: bool = typer.Option(False, "--no-stdin", help="Do not send our input."),
    ) -> None:
        from sandbox import config
        from sandbox.runtime import attach as engine

        code = engine.attach(config.load(), container, stdin=not no_stdin)
        raise typer.Exit(0 if code is None else code)


def register_commit(app: typer.Typer) -> None:
    @app.command(
        "commit",
        help="Make a new image from a container's changes.\n\nExamples:"
        "\n\n  sandbox commit web web:snapshot\n\n  sandbox commit -m 'tools' dev",
    )
    def commit(
        container: str = typer.Argument(..., help="Name or id."),
        image: str = typer.Argument(None, help="Name for the new image (default: none)."),
        message: str = typer.Option("", "--message", "-m", help="A comment in its history."),
    ) -> None:
        from sandbox import config
        from sandbox.runtime import commit as engine

        print(engine.commit(config.load(), container, image, message=message).id)
