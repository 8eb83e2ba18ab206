"""The systemd manager: a transient scope per container, made by the user's systemd manager.

Over the user bus (D-Bus, with jeepney: a pure-Python client, imported only here) we ask the
user manager for sandbox-ID.scope with Delegate=yes and the PIDs of the container's init and of
a small holder process. Delegation hands the scope's cgroup to us; inside it the init goes to
`container/` (the container's cgroup namespace root and where the limits are written) and the
holder to `supervisor/`. Why the holder: systemd stops a scope, and removes its cgroup, the
moment it is empty; the holder keeps it until sandbox has read memory.events (OOMKilled) after
PID 1 exits. The holder dies with sandbox (PDEATHSIG), so a crashed sandbox leaves an empty
scope that systemd collects by itself; `cleanup()` stops any other leftover.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sandbox.rootless import syscalls
from sandbox.rootless.cgroups import base
from sandbox.rootless.cgroups.base import PREFIX, CgroupError
from sandbox.rootless.cgroups.resources import Resources

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
JOIN_TIMEOUT = 30.0  # seconds for the scope to appear with the PIDs (slow VMs, busy hosts)
CALL_TIMEOUT = 30.0


def bus_address() -> str | None:
    """The user bus: DBUS_SESSION_BUS_ADDRESS, else the standard /run/user/UID/bus."""
    address = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    if address:
        return address
    path = Path(f"/run/user/{os.getuid()}/bus")
    return f"unix:path={path}" if path.exists() else None


def unit_name(container_id: str) -> str:
    return f"{PREFIX}{container_id}.scope"


class Systemd:
    name = "systemd"

    def __init__(self, address: str) -> None:
        self.address = address
        self._connection: Any = None
        self._holders: dict[str, tuple[int, int]] = {}  # container id -> (pid, pipe write end)

    @classmethod
    def connect(cls, address: str | None = None) -> Systemd:
        """A manager talking to the user's systemd; CgroupError when it does not answer."""
        address = address or bus_address()
        if address is None:
            raise CgroupError(
                "no systemd user manager: no user bus",
                context=f"DBUS_SESSION_BUS_ADDRESS is unset and /run/user/{os.getuid()}/bus "
                "does not exist",
                hint="log in through a systemd session (or 'loginctl enable-linger'), or "
                "use cgroup_manager: cgroupfs with a delegated cgroup",
            )
        manager = cls(address)
        manager._call("GetUnit", "s", ("-.slice",), ignore=("NoSuchUnit",))
        return manager

    # -- D-Bus ---------------------------------------------------------------------------------

    def _bus(self) -> Any:
        if self._connection is None:
            from jeepney.io.blocking import open_dbus_connection

            try:
                self._connection = open_dbus_connection(bus=self.address)
            except Exception as e:  # jeepney raises OSError, ValueError, AuthenticationError
                raise CgroupError(
                    "cannot connect to the systemd user manager",
                    context=f"{self.address}: {e}",
                    hint="check 'systemctl --user status', or set cgroup_manager in config.yaml",
                ) from e
        return self._connection

    def _call(
        self, method: str, signature: str, body: tuple[Any, ...], *, ignore: tuple[str, ...] = ()
    ) -> tuple[Any, ...]:
        from jeepney import DBusAddress, new_method_call
        from jeepney.wrappers import DBusErrorResponse

        address = DBusAddress(MANAGER_PATH, bus_name=SYSTEMD, interface=MANAGER)
        message = new_method_call(address, method, signature, body)
        try:
            reply = self._bus().send_and_get_reply(message, timeout=CALL_TIMEOUT)
            return tuple(unwrap(reply))
        except DBusErrorResponse as e:
            if any(e.name.endswith(f".{name}") for name in ignore):
                return ()
            raise CgroupError(
                f"systemd refused {method}", context=f"{e.name}: {' '.join(map(str, e.data))}"
            ) from e
        except (OSError, TimeoutError) as e:
            raise CgroupError(f"systemd did not answer {method}", context=str(e)) from e

    def _property(self, name: str) -> Any:
        from jeepney import DBusAddress, new_method_call

        address = DBusAddress(
            MANAGER_PATH, bus_name=SYSTEMD, interface="org.freedesktop.DBus.Properties"
        )
        message = new_method_call(address, "Get", "ss", (MANAGER, name))
        try:
            reply = unwrap(self._bus().send_and_get_reply(message, timeout=CALL_TIMEOUT))
        except Exception:
            return None
        return reply[0][1] if reply else None

    # -- the manager interface -----------------------------------------------------------------

    def manager_cgroup(self) -> Path:
        """The user manager's own cgroup: what it can delegate is what it was delegated."""
        group = self._property("ControlGroup")
        if not isinstance(group, str) or not group:
            uid = os.getuid()
            group = f"/user.slice/user-{uid}.slice/user@{uid}.service"
        return base.MOUNT / group.lstrip("/")

    def controllers(self) -> set[str]:
        return base.read_controllers(self.manager_cgroup())

    def enter(self, container_id: str, pid: int, resources: Resources) -> Path:
        name = unit_name(container_id)
        holder, pipe = _start_holder()
        self._holders[container_id] = (holder, pipe)
        try:
            properties = [
                ("Description", ("s", f"sandbox container {container_id[:12]}")),
                ("PIDs", ("au", [holder, pid])),
                ("Delegate", ("b", True)),
                ("CollectMode", ("s", "inactive-or-failed")),
            ]
            self._call("StartTransientUnit", "ssa(sv)a(sa(sv))", (name, "fail", properties, []))
            scope = _wait_for_scope((holder, pid), name)
            supervisor, container = scope / "supervisor", scope / "container"
            for path, member in ((supervisor, holder), (container, pid)):
                path.mkdir(exist_ok=True)
                base.write(path / "cgroup.procs", str(member))
            # Controllers can be enabled below the scope only now that no process is in it.
            wanted = base.to_enable(resources, base.read_controllers(scope))
            if wanted:
                base.write(scope / "cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))
            base.apply(container, resources)
            return container
        except BaseException:
            self.remove(container_id)
            raise

    def release(self, container_id: str) -> None:
        holder = self._holders.pop(container_id, None)
        if holder is None:
            return
        pid, pipe = holder
        with contextlib.suppress(OSError):
            os.close(pipe)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)

    def remove(self, container_id: str) -> None:
        self.release(container_id)
        self._call("StopUnit", "ss", (unit_name(container_id), "fail"), ignore=("NoSuchUnit",))

    def cleanup(self, live_ids: Iterable[str]) -> None:
        live = {unit_name(i) for i in live_ids} | {unit_name(i) for i in self._holders}
        units = self._call(
            "ListUnitsByPatterns", "asas", ([], [f"{PREFIX}*.scope"]), ignore=("UnknownMethod",)
        )
        for unit in units[0] if units else []:
            if unit[0] not in live:
                with contextlib.suppress(CgroupError):
                    self._call("StopUnit", "ss", (unit[0], "fail"), ignore=("NoSuchUnit",))


def unwrap(reply: Any) -> Any:
    """The body of a jeepney reply; an error reply raises DBusErrorResponse."""
    from jeepney.wrappers import unwrap_msg

    return unwrap_msg(reply)


def _start_holder() -> tuple[int, int]:
    """Fork the process that keeps the scope alive until sandbox releases it."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
                signal.signal(signum, signal.SIG_IGN)
            # Hold nothing but the pipe: in a detached container's monitor, stdout and stderr
            # are the container's output pipes, whose end the monitor waits for.
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                if fd != read_end:
                    os.dup2(null, fd)
            os.closerange(3, read_end)
            os.closerange(read_end + 1, 65536)
            os.read(read_end, 1)
        finally:
            os._exit(0)
    os.close(read_end)
    return pid, write_end


def _wait_for_scope(pids: tuple[int, ...], name: str) -> Path:
    """The scope's cgroup, once systemd has moved every pid into it and handed it to us.

    StartTransientUnit only queues a job. Until a pid is in the scope it cannot be moved
    within it (the kernel checks the common ancestor), and until systemd has chowned the
    delegated cgroup we cannot write it: wait for both.
    """
    deadline = time.monotonic() + JOIN_TIMEOUT
    while True:
        groups = [base.own_cgroup(pid) for pid in pids]
        if all(g is not None and g.rstrip("/").endswith(f"/{name}") for g in groups):
            scope = base.MOUNT / str(groups[0]).lstrip("/")
            if os.access(scope / "cgroup.procs", os.W_OK) and os.access(scope, os.W_OK):
                return scope
        if time.monotonic() > deadline:
            raise CgroupError(
                f"systemd did not put the container into {name}",
                context=f"after {JOIN_TIMEOUT:g}s: {', '.join(map(str, groups))}",
                hint="see 'journalctl --user -u " + name + "'",
            )
        time.sleep(0.005)
