"""The engine behind `sandbox-runtime`, a runc-compatible OCI runtime: container state under
--root, and the lifecycle verbs create, start, state, kill, delete, run, exec, ps, list.

State: ROOT/<id>/state.json (pid, its start time, bundle, created, annotations, the mapping),
ROOT/<id>/config.json (the bundle's config as created; exec and hooks read it), and
ROOT/<id>/exec.fifo while the container is "created". Status is derived, never stored: PID 1
gone (or a zombie) -> stopped; exec.fifo present -> created; else running.

create spawns the intermediate (runtime/init.py's protocol), with a user namespace of its
own only when config.json asks for one: podman runs us inside its user namespace, where we are
uid 0 with the whole mapping, and its config has none. PID 1 sets the container up, closes the
channel and blocks opening exec.fifo for writing (init._wait_start_fifo); create then writes
the pid file and exits, and PID 1 passes to the caller's subreaper (conmon). start opens the
FIFO for reading, which lets PID 1 go on to execve.

Hooks run in the runtime's namespaces with the state JSON on stdin: prestart, createRuntime
and createContainer once the container is set up (before create returns), startContainer in
start just before the FIFO is opened, poststart after it, poststop in delete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import termios
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from sandbox import codec
from sandbox.errors import ContainerError, ExitCode, SandboxError, UsageError
from sandbox.rootless import syscalls, userns
from sandbox.rootless.channel import Channel, ChannelClosed
from sandbox.rootless.idmap import IdMapping, IdRange

STATE = "state.json"
CONFIG = "config.json"
# The runtime-spec version of the state JSON (sandbox/oci/spec.py's OCI_VERSION; not imported
# from there: state, start, kill and delete stay clear of the spec conversion's imports).
STATE_VERSION = "1.0.2"
FIFO = "exec.fifo"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")
Warn = Callable[[str], None]


def default_root() -> Path:
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir and os.path.isdir(runtime_dir):
        return Path(runtime_dir) / "sandbox-runtime"
    return Path(f"/tmp/sandbox-runtime-{os.getuid()}")


@dataclasses.dataclass(frozen=True)
class State:
    """What ROOT/<id>/state.json keeps about a container."""

    id: str
    pid: int
    pid_start: int
    bundle: str
    created: str
    annotations: dict[str, str]
    mapping: IdMapping
    cgroups_path: str = ""
    cgroup_manager: str = "disabled"  # the manager that made its cgroup (limits only)


class Runtime:
    """The containers under one --root directory."""

    def __init__(self, root: Path, warn: Warn) -> None:
        self.root = root
        self.warn = warn

    # --- state -----------------------------------------------------------------------------

    def dir(self, container_id: str) -> Path:
        if not _ID.match(container_id):
            raise UsageError(
                f"invalid container id {container_id!r}",
                hint="use letters, digits and _ . + - (at most 128 characters)",
            )
        return self.root / container_id

    def load(self, container_id: str) -> State:
        path = self.dir(container_id) / STATE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ContainerError(
                f"container {container_id} does not exist",
                hint=f"'sandbox-runtime --root {self.root} list' shows the containers",
            ) from None
        except (OSError, ValueError) as e:
            raise ContainerError(f"cannot read the state of {container_id}", context=str(e)) from e
        return codec.from_json(State, data)

    def status(self, st: State) -> str:
        if not _alive(st.pid, st.pid_start):
            return "stopped"
        return "created" if (self.dir(st.id) / FIFO).exists() else "running"

    def state_json(self, st: State) -> dict[str, Any]:
        status = self.status(st)
        return {
            "ociVersion": STATE_VERSION,
            "id": st.id,
            "status": status,
            "pid": st.pid if status != "stopped" else 0,
            "bundle": st.bundle,
            "annotations": st.annotations,
            "created": st.created,
        }

    def list(self) -> list[State]:
        out = []
        with contextlib.suppress(FileNotFoundError):
            for entry in sorted(os.listdir(self.root)):
                with contextlib.suppress(SandboxError):
                    out.append(self.load(entry))
        return out

    def config(self, container_id: str) -> dict[str, Any]:
        path = self.dir(container_id) / CONFIG
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ContainerError(f"cannot read {path}", context=str(e)) from e
        return data if isinstance(data, dict) else {}

    # --- create ----------------------------------------------------------------------------

    def create(
        self,
        container_id: str,
        bundle: Path,
        *,
        pid_file: Path | None = None,
        console_socket: Path | None = None,
        preserve_fds: int = 0,
    ) -> State:
        from sandbox.oci import spec as oci

        cdir = self.dir(container_id)
        bundle = Path(os.path.abspath(bundle))
        config = oci.load(bundle)
        linux = config.get("linux") or {}
        names = {ns.get("type") for ns in linux.get("namespaces") or [] if isinstance(ns, dict)}
        if "mount" not in names:
            raise UsageError(
                "config.json: linux.namespaces: the container needs a mount namespace",
                hint='add {"type": "mount"}',
            )
        own_userns = oci.wants_user_namespace(config)
        privileged = os.geteuid() == 0  # root here: podman's user namespace (or the host's)
        if not own_userns and not privileged:
            raise UsageError(
                "config.json: linux.namespaces: a rootless container needs a user namespace",
                hint='add {"type": "user"} to linux.namespaces, or run the runtime inside one '
                "(podman unshare)",
            )
        mapping = _mapping(config, own_userns, privileged)
        terminal = bool((config.get("process") or {}).get("terminal"))
        if terminal and console_socket is None:
            raise UsageError(
                "process.terminal is true but no --console-socket was given",
                hint="pass --console-socket PATH to receive the pty master",
            )
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            cdir.mkdir(mode=0o700)
        except FileExistsError:
            raise ContainerError(
                f"container {container_id} already exists",
                hint=f"'sandbox-runtime delete {container_id}' removes it",
            ) from None
        pid1: int | None = None
        try:
            ctx = oci.Context(bundle, container_id, mapping, seccomp_dir=cdir)
            spec = oci.from_config(config, ctx)
            if not spec.root.path.is_dir():
                raise UsageError(f"config.json: root.path: {spec.root.path} is not a directory")
            fifo = cdir / FIFO
            os.mkfifo(fifo, 0o600)
            if own_userns and mapping.host_uid(0) != os.geteuid():
                # Root of the container is not our uid: PID 1 opens the FIFO for writing.
                # It reaches it through an fd it inherits (fifo_fd), never by the (0700) path.
                os.chmod(fifo, 0o622)
            fifo_fd = os.open(fifo, os.O_PATH)  # inherited by PID 1 (init.pid1 closes it)
            process = dataclasses.replace(spec.process, interactive=True)  # stdio as given
            spec = dataclasses.replace(
                spec,
                process=process,
                start_fifo=f"/proc/self/fd/{fifo_fd}",
                preserve_fds=preserve_fds,
            )
            (cdir / CONFIG).write_text(json.dumps(config))
            manager = _cgroup_manager(spec)
            pid1 = self._spawn(spec, own_userns, privileged, config, console_socket, manager)
            st = State(
                id=container_id,
                pid=pid1,
                pid_start=_start_time(pid1) or 0,
                bundle=str(bundle),
                created=_now(),
                annotations={str(k): str(v) for k, v in (config.get("annotations") or {}).items()},
                mapping=mapping,
                cgroups_path=str(linux.get("cgroupsPath") or ""),
                cgroup_manager=manager.name if manager is not None else "disabled",
            )
            _write_atomic(cdir / STATE, json.dumps(codec.to_json(st)).encode())
            hooks = config.get("hooks") or {}
            for kind in ("prestart", "createRuntime"):
                run_hooks(kind, hooks.get(kind), self.state_json(st))
            # PID 1 has pivoted and waits on the FIFO: these run in the container.
            self._container_hooks(st, config, "createContainer", hooks.get("createContainer"))
            if pid_file is not None:
                _write_atomic(Path(os.path.abspath(pid_file)), str(pid1).encode())
            return st
        except BaseException:
            if pid1 is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid1, signal.SIGKILL)
            shutil.rmtree(cdir, ignore_errors=True)
            raise

    def _spawn(
        self,
        spec: Any,
        own_userns: bool,
        privileged: bool,
        config: dict[str, Any],
        console_socket: Path | None,
        manager: Any,
    ) -> int:
        """The intermediate and PID 1 (runtime/init.py's protocol, steps 1-9); PID 1's pid once
        it waits on the FIFO."""
        from sandbox.rootless.userns import assert_single_threaded

        assert_single_threaded()
        parent_end, child_end = Channel.pair()
        intermediate = os.fork()
        if intermediate == 0:  # pragma: no cover - runs in the child
            parent_end.close()
            _intermediate(spec, child_end, spec.mapping if own_userns else None)
        child_end.close()
        pid1: int | None = None
        try:
            if own_userns:
                parent_end.expect("unshared")
                _write_mapping(intermediate, spec.mapping, privileged)
                parent_end.send("mapped")
            if manager is not None:
                # Before it forks PID 1, so nothing of the container escapes the limits.
                manager.enter(spec.id, intermediate, spec.resources)
            parent_end.send("cgroup")
            message, _ = parent_end.expect("pid1")
            pid1 = int(message["pid"])
            _wait(intermediate)
            parent_end.send("reparented")
            if spec.process.terminal:
                _, fds = parent_end.expect("pty")
                master = fds[0]
                try:
                    size = (config.get("process") or {}).get("consoleSize") or {}
                    if size:
                        winsize = struct.pack(
                            "HHHH", int(size.get("height", 0)), int(size.get("width", 0)), 0, 0
                        )
                        fcntl.ioctl(master, termios.TIOCSWINSZ, winsize)
                    assert console_socket is not None
                    send_console(console_socket, master)
                finally:
                    os.close(master)
                parent_end.send("pty_ready")
            parent_end.expect("ready")
            parent_end.send("start")
            # PID 1 closes the channel once it waits on the FIFO (an error arrives instead).
            with contextlib.suppress(ChannelClosed):
                while True:
                    parent_end.recv()
            return pid1
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.kill(intermediate, signal.SIGKILL)
            if pid1 is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid1, signal.SIGKILL)
            _wait(intermediate)
            raise
        finally:
            parent_end.close()

    # --- start, kill, delete ---------------------------------------------------------------

    def start(self, container_id: str) -> None:
        st = self.load(container_id)
        status = self.status(st)
        if status != "created":
            raise ContainerError(
                f"cannot start container {container_id}: it is {status}",
                hint="only a created container can be started",
            )
        config = self.config(container_id)
        hooks = config.get("hooks") or {}
        self._container_hooks(st, config, "startContainer", hooks.get("startContainer"))
        fifo = self.dir(container_id) / FIFO
        # Non-blocking: the open returns at once and wakes PID 1, blocked opening for writing.
        try:
            fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:  # a concurrent start won
            raise ContainerError(f"cannot start container {container_id}: it is running") from None
        try:
            deadline = time.monotonic() + 10
            while True:
                ready, _, _ = select.select([fd], [], [], 0.05)
                if ready and os.read(fd, 1):
                    break
                if not _alive(st.pid, st.pid_start) or time.monotonic() > deadline:
                    raise ContainerError(
                        f"container {container_id} did not start",
                        context="its PID 1 exited before reading the start signal",
                    )
        finally:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                fifo.unlink()
        for hook in ("poststart",):
            try:
                run_hooks(hook, hooks.get(hook), self.state_json(st))
            except SandboxError as error:
                self.warn(str(error))

    def _container_hooks(self, st: State, config: dict[str, Any], kind: str, hooks: Any) -> None:
        """createContainer and startContainer hooks: in the container's namespaces (its root,
        its PID namespace), with the process's capabilities and seccomp, state on stdin."""
        if not hooks:
            return
        if not isinstance(hooks, list):
            raise UsageError(f"config.json: hooks.{kind}: must be a list")
        state = json.dumps(self.state_json(st)).encode()
        for number, hook in enumerate(hooks):
            field = f"hooks.{kind}[{number}]"
            path = hook.get("path") if isinstance(hook, dict) else None
            if not isinstance(path, str) or not path.startswith("/"):
                raise UsageError(f"config.json: {field}.path: must be an absolute path")
            process = dict(config.get("process") or {})
            process.update(
                args=[path, *[str(a) for a in (hook.get("args") or [path])[1:]]],
                env=[str(e) for e in hook.get("env") or []],
                cwd="/",
                terminal=False,
            )
            timeout = hook.get("timeout")
            if timeout is not None and (not isinstance(timeout, int) or timeout <= 0):
                raise UsageError(f"config.json: {field}.timeout: must be a positive integer")
            code = self._exec_in(st, process, stdin=state, timeout=timeout, what=field)
            if code != 0:
                raise ContainerError(f"{field} ({path}) failed with exit status {code}")

    def kill(self, container_id: str, signum: int, *, all_processes: bool = False) -> None:
        st = self.load(container_id)
        status = self.status(st)
        if status not in ("created", "running"):
            raise ContainerError(
                f"cannot kill container {container_id}: it is {status}",
                hint="a signal can only be sent to a created or running container",
            )
        pids = container_pids(st.pid) if all_processes else [st.pid]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def delete(self, container_id: str, *, force: bool = False) -> None:
        cdir = self.dir(container_id)
        if not (cdir / STATE).exists():
            if force and cdir.exists():
                shutil.rmtree(cdir, ignore_errors=True)  # a create that died half-way
                return
            self.load(container_id)  # raises "does not exist"
        st = self.load(container_id)
        status = self.status(st)
        if status == "running" and not force:
            raise ContainerError(
                f"cannot delete container {container_id}: it is running",
                hint=f"'sandbox-runtime kill {container_id} KILL' first, or delete --force",
            )
        if status != "stopped":
            for pid in container_pids(st.pid) or [st.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while _alive(st.pid, st.pid_start) and time.monotonic() < deadline:
                time.sleep(0.01)
        try:
            hooks = self.config(container_id).get("hooks") or {}
        except SandboxError:
            hooks = {}
        stopped = dict(self.state_json(st), status="stopped")
        if st.cgroup_manager != "disabled":
            from sandbox.rootless import cgroups

            with contextlib.suppress(SandboxError):
                cgroups.by_name(st.cgroup_manager).remove(st.id)
        shutil.rmtree(cdir, ignore_errors=True)
        try:
            run_hooks("poststop", hooks.get("poststop"), stopped)
        except SandboxError as error:
            self.warn(str(error))

    # --- exec ------------------------------------------------------------------------------

    def exec(
        self,
        container_id: str,
        process: dict[str, Any],
        *,
        detach: bool = False,
        console_socket: Path | None = None,
        pid_file: Path | None = None,
    ) -> int:
        """A new process in a running container (runtime/exec.py's joining); its exit status,
        or 0 at once with detach."""
        st = self.load(container_id)
        status = self.status(st)
        if status != "running":
            raise ContainerError(f"cannot exec in container {container_id}: it is {status}")
        return self._exec_in(
            st, process, detach=detach, console_socket=console_socket, pid_file=pid_file
        )

    def _exec_in(
        self,
        st: State,
        process: dict[str, Any],
        *,
        detach: bool = False,
        console_socket: Path | None = None,
        pid_file: Path | None = None,
        stdin: bytes | None = None,
        timeout: int | None = None,
        what: str = "the process",
    ) -> int:
        """Run process in st's container; its exit code (0 at once with detach). With a
        timeout (a hook's), a process still running after it is killed, and that is an error."""
        from sandbox.oci import spec as oci
        from sandbox.rootless.userns import assert_single_threaded
        from sandbox.runtime import exec as exec_

        container_id = st.id
        config = dict(self.config(container_id))
        config["process"] = process
        ctx = oci.Context(Path(st.bundle), container_id, st.mapping, seccomp_dir=None)
        spec = oci.from_config(config, ctx)
        spec = dataclasses.replace(
            spec, process=dataclasses.replace(spec.process, interactive=True), init=False
        )
        if spec.process.terminal and console_socket is None:
            raise UsageError("a terminal needs --console-socket", hint="pass --console-socket")
        namespaces = exec_._open_namespaces(st.pid)
        assert_single_threaded()
        if not detach:
            # The process is our grandchild: as a subreaper we inherit it and see its status.
            syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
        parent_end, child_end = Channel.pair()
        feed = os.pipe() if stdin is not None else None
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            parent_end.close()
            if feed is not None:
                os.dup2(feed[0], 0)
                os.close(feed[0])
                os.close(feed[1])
            exec_._join(spec, namespaces, child_end, detach)
        child_end.close()
        for fd in namespaces.values():
            os.close(fd)
        if feed is not None:
            os.close(feed[0])
            with contextlib.suppress(OSError):
                os.write(feed[1], stdin or b"")  # the state JSON fits a pipe's buffer
            os.close(feed[1])
        pid: int | None = None
        try:
            message, _ = parent_end.expect("pid1")
            pid = int(message["pid"])
            _wait(child)
            parent_end.send("reparented")
            if spec.process.terminal:
                _, fds = parent_end.expect("pty")
                try:
                    assert console_socket is not None
                    send_console(console_socket, fds[0])
                finally:
                    os.close(fds[0])
                parent_end.send("pty_ready")
            parent_end.expect("ready")
            parent_end.send("start")
            with contextlib.suppress(ChannelClosed):
                while True:
                    parent_end.recv()
        except BaseException:
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            raise
        finally:
            parent_end.close()
        if pid_file is not None:
            _write_atomic(Path(os.path.abspath(pid_file)), str(pid).encode())
        if detach:
            return 0
        from sandbox.errors import exit_code_for_wait_status

        if timeout is not None and not syscalls.exits_within(pid, timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait(pid)
            raise ContainerError(f"{what} timed out after {timeout} s and was killed")
        return exit_code_for_wait_status(_wait(pid))


# --- the intermediate ------------------------------------------------------------------------


def _intermediate(
    spec: Any, channel: Channel, mapping: IdMapping | None
) -> NoReturn:  # pragma: no cover - runs in the child
    from sandbox.runtime import init

    code = int(ExitCode.ENGINE)
    try:
        # Dies with `create` (which waits for it); PID 1, forked below, takes no PDEATHSIG.
        syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
        host_uid = os.geteuid()
        if mapping is not None:
            try:
                syscalls.unshare(syscalls.CLONE_NEWUSER)
            except OSError as e:
                raise ContainerError("cannot create a user namespace", context=e.strerror) from e
            userns.become_root(channel, mapping, host_uid)
        code = init.intermediate(spec, channel)
    except BaseException as error:
        channel.send_error(error)
        code = int(getattr(error, "exit_code", ExitCode.ENGINE))
    finally:
        os._exit(code)


def _cgroup_manager(spec: Any) -> Any:
    """The cgroup manager for linux.resources (None without limits: the container then stays
    in our cgroup, and cgroupsPath is only recorded). Limits that cannot be enforced here are
    refused, naming the field."""
    if spec.resources.empty:
        return None
    from sandbox.rootless import cgroups

    manager = cgroups.select("enabled", "auto")
    try:
        cgroups.check(manager, spec.resources, lambda _message: None)
    except SandboxError as error:
        raise UsageError(
            f"config.json: linux.resources: {error.message}",
            context=error.context,
            hint=error.hint,
        ) from error
    return manager


def _mapping(config: dict[str, Any], own_userns: bool, privileged: bool) -> IdMapping:
    """The container's id mapping, in the ids of the namespace we run in."""
    from sandbox.oci import spec as oci

    ours = own_mapping()
    if not own_userns:
        return ours  # no user namespace of its own: ours, as it is
    if privileged:
        # Inside podman's user namespace: any of the ids it maps may be mapped again (written
        # to /proc/PID/uid_map directly; newuidmap checks host subordinate ids and refuses).
        from sandbox.oci import bundle

        linux = config.get("linux") or {}
        if not (linux.get("uidMappings") or linux.get("gidMappings")):
            return ours
        wanted = oci._mapping(linux, oci.Context(Path("."), "", ours), {})
        problem = bundle.mappable(wanted, ours)
        if problem is not None:
            raise UsageError(f"config.json: {problem}")
        return wanted
    from sandbox.oci import bundle
    from sandbox.rootless import idmap

    return bundle.config_mapping(config, idmap.for_current_user("auto"))


def own_mapping() -> IdMapping:
    """The ids this process's user namespace maps, as an identity mapping of them."""

    def read(name: str) -> tuple[IdRange, ...]:
        ranges = []
        for line in Path(f"/proc/self/{name}").read_text().splitlines():
            inside, _outside, size = (int(x) for x in line.split())
            ranges.append(IdRange(inside, inside, size))
        return tuple(ranges)

    return IdMapping(read("uid_map"), read("gid_map"))


def _write_mapping(pid: int, mapping: IdMapping, privileged: bool) -> None:
    if not privileged:
        from sandbox.rootless import idmap

        idmap.write_mapping(pid, mapping)
        return
    # With CAP_SETUID/CAP_SETGID over our own namespace, the maps are written directly.
    proc = Path(f"/proc/{pid}")
    try:
        if mapping.single:
            (proc / "setgroups").write_text("deny")
        for name, ranges in (("uid_map", mapping.uids), ("gid_map", mapping.gids)):
            (proc / name).write_text("".join(f"{r.inside} {r.outside} {r.size}\n" for r in ranges))
    except OSError as e:
        raise ContainerError(
            f"cannot write the id mapping of process {pid}",
            context=e.strerror,
            hint="linux.uidMappings/gidMappings must map ids this namespace has",
        ) from e


# --- helpers ---------------------------------------------------------------------------------


def send_console(path: Path, master: int) -> None:
    """Hand the pty master to the caller over its unix socket, as runc does (SCM_RIGHTS)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
        sock.sendmsg(
            [b"/dev/ptmx"],
            [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", master))],
        )
    except OSError as e:
        raise ContainerError(f"cannot send the pty to {path}", context=e.strerror) from e
    finally:
        sock.close()


def run_hooks(kind: str, hooks: Any, state: dict[str, Any]) -> None:
    """Run config.json's hooks of one kind in order, with the state on stdin; one failing
    stops the rest and is an error naming it."""
    if not hooks:
        return
    if not isinstance(hooks, list):
        raise UsageError(f"config.json: hooks.{kind}: must be a list")
    data = json.dumps(state).encode()
    for number, hook in enumerate(hooks):
        field = f"hooks.{kind}[{number}]"
        path = hook.get("path") if isinstance(hook, dict) else None
        if not isinstance(path, str) or not path.startswith("/"):
            raise UsageError(f"config.json: {field}.path: must be an absolute path")
        args = [str(a) for a in hook.get("args") or [path]]
        env = dict(str(e).partition("=")[::2] for e in hook.get("env") or [])
        timeout = hook.get("timeout")
        try:
            done = subprocess.run(
                args,
                executable=path,
                input=data,
                env=env,
                timeout=timeout if isinstance(timeout, int) and timeout > 0 else None,
                capture_output=True,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ContainerError(f"{field} ({path}) failed", context=str(e)) from e
        if done.returncode != 0:
            raise ContainerError(
                f"{field} ({path}) failed with exit status {done.returncode}",
                context=done.stderr.decode(errors="replace").strip()[-500:] or None,
            )


def container_pids(pid1: int) -> list[int]:
    """Every process in PID 1's PID namespace (as seen from ours), PID 1 first."""
    try:
        target = os.readlink(f"/proc/{pid1}/ns/pid")
    except OSError:
        return []
    found = [pid1]
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == pid1:
            continue
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{entry}/ns/pid") == target:
                found.append(int(entry))
    return found


def parse_signal(text: str) -> int:
    name = text.upper()
    if name.isdigit():
        number = int(name)
    else:
        name = name if name.startswith("SIG") else "SIG" + name
        value = getattr(signal.Signals, name, None) if name in signal.Signals.__members__ else None
        if value is None:
            raise UsageError(f"unknown signal {text!r}", hint="use a name (TERM, KILL) or number")
        number = int(value)
    if not 0 < number < 65:
        raise UsageError(f"invalid signal number {text!r}")
    return number


def _proc_stat(pid: int) -> list[str] | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return data[data.rindex(")") + 2 :].split()


def _start_time(pid: int) -> int | None:
    fields = _proc_stat(pid)
    return int(fields[19]) if fields else None


def _alive(pid: int, start: int) -> bool:
    fields = _proc_stat(pid)
    return fields is not None and fields[0] not in ("Z", "X") and int(fields[19]) == start


def _wait(pid: int) -> int:
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue


def _now() -> str:
    import datetime

    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


def _write_atomic(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    with open(temporary, "wb") as f:
        f.write(data)
    os.replace(temporary, path)


def features() -> dict[str, Any]:
    """`sandbox-runtime features` (runtime-spec features.md)."""
    from sandbox.oci import spec as oci
    from sandbox.rootless import caps, mounts

    return {
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.1.0",
        "hooks": list(oci.HOOK_NAMES),
        "mountOptions": sorted({*mounts._FLAG_WORDS, *mounts._IGNORED_WORDS}),
        "linux": {
            "namespaces": sorted({*oci.NAMESPACE_TYPES, "user", "time"}),
            "capabilities": ["CAP_" + c for c in caps.NUMBERS],
            "cgroup": {"v1": False, "v2": True, "systemd": False, "systemdUser": False},
            "seccomp": {
                "enabled": True,
                "actions": [
                    "SCMP_ACT_ALLOW",
                    "SCMP_ACT_ERRNO",
                    "SCMP_ACT_KILL",
                    "SCMP_ACT_KILL_PROCESS",
                    "SCMP_ACT_KILL_THREAD",
                    "SCMP_ACT_LOG",
                    "SCMP_ACT_TRACE",
                    "SCMP_ACT_TRAP",
                ],
                "operators": [
                    "SCMP_CMP_EQ",
                    "SCMP_CMP_GE",
                    "SCMP_CMP_GT",
                    "SCMP_CMP_LE",
                    "SCMP_CMP_LT",
                    "SCMP_CMP_MASKED_EQ",
                    "SCMP_CMP_NE",
                ],
                "archs": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            },
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
        },
        "annotations": {"io.sandbox.runtime": "sandbox-runtime"},
    }


__all__ = [
    "Runtime",
    "State",
    "container_pids",
    "default_root",
    "features",
    "own_mapping",
    "parse_signal",
    "run_hooks",
    "send_console",
]
