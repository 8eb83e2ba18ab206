"""The `sandbox` command: the typer app, global options, and the one place errors become exits.

Each command group lives in its own module and registers itself on the app; those modules
import the engine inside the command functions, so `sandbox --help` stays cheap.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from typing import NoReturn

# Start-up makes some 100,000 objects that live as long as the process (typer and click, the
# command, the engine's modules), and the cyclic collector would walk them again and again:
# 5 to 15 ms of every command. It is paused while they are made; main() then freezes them out
# of its sight (gc.freeze) and resumes it before the command runs.
_COLLECTING = gc.isenabled()
gc.disable()

import typer  # noqa: E402

try:  # typer 0.28 vendors click; other versions use the click package
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover
    from click import exceptions as click_errors  # type: ignore[no-redef,import-not-found]

from sandbox import __version__  # noqa: E402
from sandbox.errors import ExitCode, SandboxError  # noqa: E402

gc.freeze()
if _COLLECTING:  # imported without main() (tests, tools): the collector as it was
    gc.enable()

CONTEXT = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(
    name="sandbox",
    help="Run rootless containers: no root, no daemon.",
    context_settings=CONTEXT,
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)

_debug = False


def _version(value: bool) -> None:
    if value:
        print(f"sandbox version {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    version: bool = typer.Option(
        False,
        "--version",
        "-v",
        callback=_version,
        is_eager=True,
        help="Print the version and exit.",
    ),
    debug: bool = typer.Option(
        False, "--debug", help="Show tracebacks for internal errors (and --log-level debug)."
    ),
    log_level: str = typer.Option(
        "warning", "--log-level", help="debug, info, warning or error: what to log to stderr."
    ),
) -> None:
    global _debug
    _debug = debug or bool(os.environ.get("SANDBOX_DEBUG"))
    levels = ("debug", "info", "warning", "error")
    if log_level not in levels:
        from sandbox.errors import UsageError

        raise UsageError(
            f"invalid --log-level {log_level!r}", hint=f"use one of: {', '.join(levels)}"
        )
    if _debug or log_level != "warning":
        # logging is imported only when asked for: start-up time is measured.
        import logging

        logging.basicConfig(
            level=logging.DEBUG if _debug else getattr(logging, log_level.upper()),
            format="sandbox: %(levelname)s: %(name)s: %(message)s",
        )


# Which module registers each command: a run registers only the module it needs (building
# every command costs ~20 ms per start). A name missing here falls back to registering
# everything, and tests/unit/test_cli_help.py checks the table against the real commands.
COMMAND_MODULES = {
    "run": "run", "create": "run",
    "image": "images", "images": "images", "rmi": "images", "tag": "images", "pull": "images",
    "push": "images", "save": "images", "load": "images", "login": "images", "logout": "images",
    "import": "images",
    "ps": "containers", "rm": "containers",
    "start": "lifecycle", "stop": "lifecycle", "kill": "lifecycle", "wait": "lifecycle",
    "restart": "lifecycle", "rename": "lifecycle", "exec": "lifecycle", "logs": "lifecycle",
    "top": "lifecycle", "pause": "lifecycle", "unpause": "lifecycle", "container": "lifecycle",
    "cp": "lifecycle", "diff": "lifecycle", "attach": "lifecycle", "commit": "lifecycle",
    "unshare": "unshare",
    "network": "network", "port": "network",
    "inspect": "inspect", "doctor": "doctor", "info": "info", "config": "config_cmd",
    "stats": "stats", "job": "job", "volume": "volume", "dev": "dev", "oci": "oci",
    "kube": "kube",
}  # fmt: skip
ALL_MODULES = tuple(dict.fromkeys(COMMAND_MODULES.values()))
_GLOBAL_OPTIONS_WITH_VALUE = ("--log-level",)


def _wanted_command(argv: list[str]) -> str | None:
    """The command name in argv (after the global options), if any."""
    args = iter(argv)
    for arg in args:
        if arg in _GLOBAL_OPTIONS_WITH_VALUE:
            next(args, None)
        elif not arg.startswith("-"):
            return arg
    return None


def _register(argv: list[str] | None = None) -> None:
    import importlib

    args = sys.argv[1:] if argv is None else argv
    command = _wanted_command(args)
    completing = any(k.startswith("_SANDBOX_COMPLETE") for k in os.environ)
    if command is None and not completing and {"--version", "-v"} & set(args):
        return  # the version alone: no command is looked at
    module = COMMAND_MODULES.get(command or "") if not completing else None
    for name in (module,) if module else ALL_MODULES:
        importlib.import_module(f"sandbox.cli.{name}").register(app)
    if module:
        # Only the command asked for is built: typer makes a click command of every one
        # registered, inspecting its signature (~5 ms for the other 15 of lifecycle's).
        app.registered_commands = [c for c in app.registered_commands if c.name in (None, command)]
        app.registered_groups = [g for g in app.registered_groups if g.name in (None, command)]


def print_error(error: SandboxError) -> None:
    print(f"Error: {error}", file=sys.stderr)
    if error.hint:
        print(f"Hint: {error.hint}", file=sys.stderr)


def main(argv: list[str] | None = None) -> NoReturn:
    gc.disable()
    _register(argv)
    command = typer.main.get_command(app)
    gc.freeze()  # start-up's objects live as long as we do: the collector need not walk them
    if _COLLECTING:
        gc.enable()
    try:
        code = command.main(args=argv, prog_name="sandbox", standalone_mode=False)
    except SandboxError as error:
        if _debug:
            import traceback

            traceback.print_exc()
        print_error(error)
        code = error.exit_code
    except typer.Exit as done:
        code = done.exit_code
    except click_errors.ClickException as error:
        # Bad options are the engine refusing to start: 125, as podman does.
        error.show()
        code = ExitCode.ENGINE
    except typer.Abort:
        print("Aborted.", file=sys.stderr)
        code = ExitCode.ENGINE
    except KeyboardInterrupt:
        code = ExitCode.SIGNAL_BASE + 2
    except BrokenPipeError:
        # Our reader went away (`sandbox images | head`); nothing more to say.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = ExitCode.OK
    except Exception as error:
        if _debug:
            raise
        print(f"Error: internal error: {type(error).__name__}: {error}", file=sys.stderr)
        print("Hint: run again with --debug for a traceback, and report it", file=sys.stderr)
        code = ExitCode.ENGINE
    if not isinstance(code, int):
        code = ExitCode.OK
    _exit(code)


def _exit(code: int) -> NoReturn:
    """Leave without the interpreter's shutdown (~25 ms of module and object teardown on every
    command). Nothing needs it: nothing registers atexit handlers, every file is closed by the
    code that opened it, and what remains buffered is flushed here, log handlers included. A
    thread still running (none should be: a pull joins its pool before it returns) gets the
    ordinary exit, which waits for it."""
    import threading

    if threading.active_count() > 1:
        sys.stdout.flush()
        sys.exit(code)
    if "logging" in sys.modules:
        sys.modules["logging"].shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a reader gone, or a closed stream
            stream.flush()
    os._exit(code)
