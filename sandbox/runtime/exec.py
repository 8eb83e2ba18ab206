"""`sandbox exec`: a new process inside a running container.

The same parent/child protocol as `sandbox run` (runtime/init.py), with joining instead of
creating: the child setns()es into the container's user namespace first (which gives it the
capabilities to join the rest), then into its mount, PID, network, IPC, UTS, cgroup and time
namespaces, and forks the process that becomes a member of the container's PID namespace.
That process finishes exactly like the container's command (init._exec: user, stdio, fds,
capabilities, seccomp, execve), so an exec'd process is confined the same way.

Before it joins anything, the child makes itself non-dumpable: while it is still our Python
interpreter inside the container, no container process may ptrace it or open /proc/PID/exe
(the class of runc's CVE-2019-5736); execve of the command resets this.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import signal
import struct
from typing import NoReturn

from sandbox import spec as specs
from sandbox.config import Settings, runtime_root
from sandbox.errors import ContainerError, ExitCode, exit_code_for_wait_status
from sandbox.rootless import syscalls, userns
from sandbox.rootless.channel import Channel
from sandbox.rootless.userns import assert_single_threaded
from sandbox.runtime import init, parent, users
from sandbox.runtime.state import ContainerStore

# The order matters: the user namespace first, for the capabilities to join the others.
JOIN_ORDER = (
    ("user", syscalls.CLONE_NEWUSER),
    ("mnt", syscalls.CLONE_NEWNS),
    ("pid", syscalls.CLONE_NEWPID),
    ("net", syscalls.CLONE_NEWNET),
    ("ipc", syscalls.CLONE_NEWIPC),
    ("uts", syscalls.CLONE_NEWUTS),
    ("cgroup", syscalls.CLONE_NEWCGROUP),
    ("time", syscalls.CLONE_NEWTIME),
)


@dataclasses.dataclass(frozen=True)
class ExecOptions:
    command: tuple[str, ...]
    interactive: bool = False
    tty: bool = False
    detach: bool = False
    env: tuple[str, ...] = ()
    env_files: tuple[str, ...] = ()
    workdir: str | None = None
    user: str | None = None


def exec_spec(spec: specs.ContainerSpec, options: ExecOptions) -> specs.ContainerSpec:
    """The container's spec with the exec'd process in place of its command."""
    if not options.command:
        raise ContainerError("no command given", hint="sandbox exec CONTAINER COMMAND [ARG...]")
    if options.workdir is not None and not options.workdir.startswith("/"):
        raise ContainerError(f"invalid working directory {options.workdir!r}: it must be absolute")
    from_files: list[str] = []
    for path in options.env_files:
        from_files += specs.parse_env_file(path)
    cli_env = [e for e in (specs._env_entry(item, "-e") for item in options.env) if e]
    env = specs.merge_env(
        spec.process.env, from_files, cli_env, ["TERM=xterm"] if options.tty else []
    )
    process = dataclasses.replace(
        spec.process,
        args=options.command,
        env=env,
        cwd=options.workdir or spec.process.cwd,
        user=options.user or spec.process.user,
        terminal=options.tty,
        interactive=options.interactive,
    )
    return dataclasses.replace(spec, process=process, init=False)


def run(settings: Settings, name_or_id: str, options: ExecOptions) -> int:
    store = ContainerStore(settings.containers_root)
    container = store.lookup_running(name_or_id)
    spec = exec_spec(store.load_spec(container.id), options)
    namespaces = _open_namespaces(container.pid)
    if spec.network.mode == "container" and "net" in namespaces:
        # A pod member: its network namespace belongs to a sibling user namespace (the pod's
        # first container's); it is joined from the rootless netns holder's, before our own.
        from sandbox.runtime import networks

        namespaces = networks.join_order(namespaces, runtime_root())
    assert_single_threaded()
    # The exec'd process is our grandchild: as a subreaper we inherit it and see its status.
    syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
    forwarder = parent.SignalForwarder()
    parent_end, child_end = Channel.pair()
    process: int | None = None
    master: int | None = None
    with forwarder.installed():
        try:
            child = os.fork()
            if child == 0:  # pragma: no cover - runs in the child
                parent_end.close()
                _join(spec, namespaces, child_end, options.detach)
            child_end.close()
            for fd in namespaces.values():
                os.close(fd)
            message, _ = parent_end.expect("pid1")
            process = int(message["pid"])
            userns.wait_pid(child)
            parent_end.send("reparented")
            if spec.process.terminal:
                master = parent.receive_pty(parent_end, forwarder)
            parent_end.expect("ready")
            parent_end.send("start")
            parent.wait_for_exec(parent_end)
        except BaseException:
            if process is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process, signal.SIGKILL)
                userns.wait_pid(process)
            if master is not None:
                os.close(master)
            raise
        finally:
            parent_end.close()
        if options.detach:
            if master is not None:
                os.close(master)
            return ExitCode.OK
        forwarder.arm(process)
        parent.relay_terminal(spec, master)
        if master is not None:
            os.close(master)
        status = userns.wait_pid(process)
    return exit_code_for_wait_status(status)


def _open_namespaces(pid: int) -> dict[str, int]:
    """The container's namespaces, opened now so PID 1 cannot be swapped underneath us.

    Under --init, PID 1 is our interpreter made non-dumpable, and its /proc/PID/ns files are
    closed to us: then they are opened through one of its children, which share them.
    """
    try:
        return _open_namespaces_of(pid)
    except ContainerError as error:
        if not isinstance(error.__cause__, PermissionError):
            raise
        for child in _children(pid):
            try:
                return _open_namespaces_of(child)
            except ContainerError:
                continue
        raise


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2 :].split()
        if int(fields[1]) == pid:
            found.append(int(entry))
    return sorted(found)


def _open_namespaces_of(pid: int) -> dict[str, int]:
    fds: dict[str, int] = {}
    try:
        for name, _flag in JOIN_ORDER:
            path = f"/proc/{pid}/ns/{name}"
            try:
                if os.readlink(path) == os.readlink(f"/proc/self/ns/{name}"):
                    continue  # shared with us (e.g. --network host): nothing to join
                fds[name] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # a kernel without this namespace type
    except OSError as e:
        for fd in fds.values():
            os.close(fd)
        raise ContainerError(
            "cannot open the container's namespaces",
            context=e.strerror,
            hint="is the container still running? 'sandbox ps'",
        ) from e
    return fds


def _join(
    spec: specs.ContainerSpec, namespaces: dict[str, int], channel: Channel, detach: bool
) -> NoReturn:  # pragma: no cover - runs in the child
    code = ExitCode.ENGINE
    try:
        syscalls.prctl(syscalls.PR_SET_DUMPABLE, 0)
        if not detach:
            syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
        flags = dict(JOIN_ORDER) | {"holder": syscalls.CLONE_NEWUSER}
        for name, fd in namespaces.items():
            try:
                syscalls.setns(fd, flags[name])
            except OSError as e:
                raise ContainerError(
                    f"cannot join the container's {name} namespace", context=e.strerror
                ) from e
            os.close(fd)
        # Joining the mount namespace put us at its root: the container's own "/".
        pid = os.fork()
        if pid == 0:
            _process(spec, channel, detach)
        channel.send("pid1", pid=pid)
        code = ExitCode.OK
    except BaseException as error:
        channel.send_error(error)
        code = getattr(error, "exit_code", ExitCode.ENGINE)
    finally:
        os._exit(int(code))


def _process(
    spec: specs.ContainerSpec, channel: Channel, detach: bool
) -> NoReturn:  # pragma: no cover - runs in the container
    try:
        channel.expect("reparented")
        if not detach:
            syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
        os.setsid()
        slave = _open_pty(channel) if spec.process.terminal else None
        user = users.resolve(
            spec.process.user, users.read_small("/etc/passwd"), users.read_small("/etc/group")
        )
        channel.send("ready")
        channel.expect("start")
        init._exec(spec, channel, slave, user)
    except BaseException as error:
        channel.send_error(error)
        os._exit(int(getattr(error, "exit_code", ExitCode.ENGINE)))


def _open_pty(channel: Channel) -> int:
    """A pty from the container's devpts (our root is the container's after setns)."""
    try:
        master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise ContainerError("cannot open /dev/ptmx in the container", context=e.strerror) from e
    fcntl.ioctl(master, init.TIOCSPTLCK, struct.pack("i", 0))
    slave = fcntl.ioctl(master, init.TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
    channel.send("pty", fds=[master])
    os.close(master)
    channel.expect("pty_ready")
    return int(slave)
