"""`sandbox-runtime`: the runc-compatible command line (argparse: it starts fast, and conmon
calls it several times per container). The engine is sandbox/oci/runtime.py.

Errors go to stderr as one line and, with --log FILE, to FILE (as JSON lines
{"level":"error","msg":...,"time":...} with --log-format json, which conmon reads back).
Exit status: 0, the exec'd process's own status for a foreground exec, else 125.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path
from typing import Any

from sandbox.errors import ExitCode, SandboxError, UsageError


class _Log:
    def __init__(self, path: str | None, fmt: str, debug: bool) -> None:
        self.path, self.fmt, self.debug = path, fmt, debug

    def write(self, level: str, message: str) -> None:
        if level == "debug" and not self.debug:
            return
        if self.path is None:
            return
        stamp = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
        if self.fmt == "json":
            line = json.dumps({"level": level, "msg": message, "time": stamp})
        else:
            line = f'time="{stamp}" level={level} msg="{message}"'
        try:
            with open(self.path, "a") as f:
                f.write(line + "\n")
        except OSError:
            pass


def _globals(parser: argparse.ArgumentParser, suppress: bool) -> None:
    default: Any = argparse.SUPPRESS if suppress else None
    parser.add_argument("--root", default=default, help="state directory")
    parser.add_argument("--log", default=default, help="log file (errors, JSON with --log-format)")
    parser.add_argument(
        "--log-format",
        choices=("json", "text"),
        default=argparse.SUPPRESS if suppress else "text",
    )
    for flag in ("--systemd-cgroup", "--debug"):
        parser.add_argument(
            flag, action="store_true", default=argparse.SUPPRESS if suppress else False
        )
    parser.add_argument(
        "--rootless", default=default, choices=("true", "false", "auto"), help="accepted; ignored"
    )


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="sandbox-runtime", description="A runc-compatible OCI runtime (rootless)."
    )
    main.add_argument("--version", action="store_true", help="print the version")
    _globals(main, suppress=False)
    verbs = main.add_subparsers(dest="verb", metavar="COMMAND")

    def verb(name: str, help_text: str) -> argparse.ArgumentParser:
        p = verbs.add_parser(name, help=help_text)
        _globals(p, suppress=True)
        return p

    def creating(p: argparse.ArgumentParser) -> None:
        p.add_argument("--bundle", "-b", default=".")
        p.add_argument("--pid-file")
        p.add_argument("--console-socket")
        p.add_argument("--no-pivot", action="store_true")
        p.add_argument("--no-new-keyring", action="store_true")
        p.add_argument("--preserve-fds", type=int, default=0)
        p.add_argument("id")

    creating(verb("create", "create a container, stopped before its process runs"))
    p = verb("run", "create and start a container, and wait for it (unless --detach)")
    p.add_argument("--detach", "-d", action="store_true")
    creating(p)
    verb("start", "start the process of a created container").add_argument("id")
    p = verb("state", "print the runtime-spec state JSON of a container")
    p.add_argument("id")
    p = verb("kill", "send a signal to a container's PID 1 (or every process, --all)")
    p.add_argument("--all", "-a", action="store_true")
    p.add_argument("id")
    p.add_argument("signal", nargs="?", default="SIGTERM")
    p = verb("delete", "delete a container (--force: kill it first)")
    p.add_argument("--force", "-f", action="store_true")
    p.add_argument("id")
    p = verb("exec", "run a process in a running container")
    p.add_argument("--process", "-p")
    p.add_argument("--detach", "-d", action="store_true")
    p.add_argument("--tty", "-t", action="store_true")
    p.add_argument("--console-socket")
    p.add_argument("--pid-file")
    p.add_argument("--cwd")
    p.add_argument("--env", "-e", action="append", default=[])
    p.add_argument("--user", "-u")
    p.add_argument("--no-new-privs", action="store_true")
    p.add_argument("--preserve-fds", type=int, default=0)
    p.add_argument("id")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p = verb("ps", "list the processes of a container")
    p.add_argument("--format", "-f", choices=("table", "json"), default="table")
    p.add_argument("id")
    p.add_argument("ps_args", nargs=argparse.REMAINDER)
    p = verb("list", "list containers")
    p.add_argument("--format", "-f", choices=("table", "json"), default="table")
    p.add_argument("--quiet", "-q", action="store_true")
    verb("features", "print the features this runtime supports (JSON)")
    return main


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    log = _Log(args.log, args.log_format, args.debug)
    try:
        return _dispatch(args)
    except SandboxError as error:
        hint = f" (hint: {error.hint})" if error.hint else ""
        log.write("error", f"{error}{hint}")
        print(f"sandbox-runtime: error: {error}{hint}", file=sys.stderr)
        return int(getattr(error, "exit_code", ExitCode.ENGINE))
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from sandbox import __version__
    from sandbox.oci import runtime

    if args.version:
        print(f"sandbox-runtime version {__version__}\nspec: 1.0.2")
        return 0
    if args.verb is None:
        parser().print_help()
        return 0
    if args.verb == "features":
        print(json.dumps(runtime.features(), indent=2))
        return 0
    if args.systemd_cgroup:
        raise UsageError(
            "--systemd-cgroup is not supported: sandbox-runtime manages no systemd cgroups",
            hint='set cgroup_manager = "cgroupfs" in containers.conf',
        )

    def warn(message: str) -> None:
        print(f"sandbox-runtime: warning: {message}", file=sys.stderr)

    rt = runtime.Runtime(Path(args.root) if args.root else runtime.default_root(), warn)
    verb = args.verb
    if verb in ("create", "run"):
        if verb == "run" and not args.detach:
            from sandbox.rootless import syscalls

            # PID 1 is our grandchild: as a subreaper we inherit it and see its status.
            syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
        st = rt.create(
            args.id,
            Path(args.bundle),
            pid_file=Path(args.pid_file) if args.pid_file else None,
            console_socket=Path(args.console_socket) if args.console_socket else None,
            preserve_fds=args.preserve_fds,
        )
        if verb == "create":
            return 0
        rt.start(args.id)
        if args.detach:
            return 0
        from sandbox.errors import exit_code_for_wait_status

        status = runtime._wait(st.pid)
        rt.delete(args.id, force=True)
        return exit_code_for_wait_status(status)
    if verb == "start":
        rt.start(args.id)
    elif verb == "state":
        print(json.dumps(rt.state_json(rt.load(args.id)), indent=2))
    elif verb == "kill":
        rt.kill(args.id, runtime.parse_signal(args.signal), all_processes=args.all)
    elif verb == "delete":
        rt.delete(args.id, force=args.force)
    elif verb == "exec":
        return rt.exec(
            args.id,
            _process(args),
            detach=args.detach,
            console_socket=Path(args.console_socket) if args.console_socket else None,
            pid_file=Path(args.pid_file) if args.pid_file else None,
        )
    elif verb == "ps":
        st = rt.load(args.id)
        pids = runtime.container_pids(st.pid) if rt.status(st) != "stopped" else []
        if args.format == "json":
            print(json.dumps(pids))
        else:
            print("PID\tCMD")
            for pid in pids:
                print(f"{pid}\t{_cmdline(pid)}")
    elif verb == "list":
        _list(rt, args)
    return 0


def _process(args: argparse.Namespace) -> dict[str, Any]:
    """exec's process: --process FILE (a runtime-spec process object), else the arguments."""
    if args.process:
        from sandbox import codec

        process = codec.read_object(
            args.process, what=f"--process {args.process}", limit=16 << 20, error=UsageError
        )
    else:
        command = [c for c in args.command if c != "--"] if args.command[:1] == ["--"] else []
        command = command or list(args.command)
        if not command:
            raise UsageError("no command given", hint="sandbox-runtime exec ID COMMAND [ARG...]")
        process = {
            "args": command,
            "cwd": "/",
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        }
    if args.tty:
        process["terminal"] = True
    if args.cwd:
        process["cwd"] = args.cwd
    if args.env:
        process["env"] = [*(process.get("env") or []), *args.env]
    if args.user:
        uid, _, gid = args.user.partition(":")
        process["user"] = {"uid": int(uid), "gid": int(gid or 0)}
    if args.no_new_privs:
        process["noNewPrivileges"] = True
    return process


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def _list(rt: Any, args: argparse.Namespace) -> None:
    states = [rt.state_json(st) for st in rt.list()]
    if args.quiet:
        for s in states:
            print(s["id"])
    elif args.format == "json":
        print(json.dumps(states))
    else:
        print("ID\tPID\tSTATUS\tBUNDLE\tCREATED\tOWNER")
        owner = str(os.getuid())
        for s in states:
            print(f"{s['id']}\t{s['pid']}\t{s['status']}\t{s['bundle']}\t{s['created']}\t{owner}")


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
