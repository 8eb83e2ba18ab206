"""The cgroup manager interface, the disabled manager, and the checks every manager shares.

A manager puts a container's init into a cgroup of its own before the init forks PID 1 (the
init unshares its cgroup namespace after that, so the container sees that cgroup as `/`),
writes the limits there, and removes the cgroup when the container is gone. `select()` picks
one from the settings and the host; `check()` refuses limits that the chosen manager cannot
enforce, with the reason and what to change, before any process exists.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

from sandbox.errors import HostError
from sandbox.rootless.cgroups.resources import Resources

MOUNT = Path("/sys/fs/cgroup")
PREFIX = "sandbox-"

DELEGATE_FIX = (
    "as root, create /etc/systemd/system/user@.service.d/delegate.conf with the lines "
    "'[Service]' and 'Delegate=cpu cpuset io memory pids', then 'systemctl daemon-reload' "
    "and log in again"
)
DISABLE_HINT = (
    "or run without the limits: --cgroups=disabled (or 'cgroups: disabled' in config.yaml)"
)

Warn = Callable[[str], None]


class CgroupError(HostError):
    """A cgroup that cannot be created, joined, limited or removed."""


class Manager(Protocol):
    """What the runtime needs from a cgroup manager."""

    name: str

    def controllers(self) -> set[str]:
        """The controllers a container's cgroup can use (delegated to us)."""
        ...

    def enter(self, container_id: str, pid: int, resources: Resources) -> Path:
        """Create the container's cgroup with its limits and move pid into it; its path."""
        ...

    def release(self, container_id: str) -> None:
        """The container has exited (its cgroup was read): let the cgroup go."""
        ...

    def remove(self, container_id: str) -> None:
        """Remove the container's cgroup (and scope); no error when it is already gone."""
        ...

    def cleanup(self, live_ids: Iterable[str]) -> None:
        """Remove cgroups left behind by containers that are no longer running."""
        ...


class Disabled:
    """No cgroup: the container runs in the caller's cgroup, and limits are not enforced.

    reason/fix say why there is no manager (empty when the user chose this).
    """

    name = "disabled"

    def __init__(self, reason: str = "", fix: str = "", *, chosen: bool = False) -> None:
        self.reason = reason
        self.fix = fix
        self.chosen = chosen

    def controllers(self) -> set[str]:
        return set()

    def enter(self, container_id: str, pid: int, resources: Resources) -> Path:
        raise CgroupError("internal error: the disabled cgroup manager cannot enter a cgroup")

    def release(self, container_id: str) -> None:
        return None

    def remove(self, container_id: str) -> None:
        return None

    def cleanup(self, live_ids: Iterable[str]) -> None:
        return None


def check(manager: Manager, resources: Resources, warn: Warn) -> bool:
    """Whether the limits will be enforced; raise when they cannot be and the user did not
    disable cgroups. With cgroups disabled, say once that the limits are not enforced."""
    if resources.empty:
        return False
    options = resources.options()
    if isinstance(manager, Disabled):
        if manager.chosen:
            warn(f"{options} not enforced: cgroups are disabled (--cgroups or config.yaml)")
            return False
        raise CgroupError(
            f"cannot enforce {options}",
            context=manager.reason,
            hint=f"{manager.fix}; {DISABLE_HINT}",
        )
    available = manager.controllers()
    missing = [c for c in resources.controllers() if c not in available]
    if missing:
        raise CgroupError(
            f"cannot enforce {options}",
            context=f"the {', '.join(missing)} controller(s) are not delegated to this user "
            f"(delegated: {', '.join(sorted(available)) or 'none'})",
            hint=f"{DELEGATE_FIX}; {DISABLE_HINT}",
        )
    return True


def own_cgroup(pid: int | str = "self") -> str | None:
    """The cgroup v2 path of a process ("/user.slice/..."), or None without one."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


def unified(root: Path = MOUNT) -> bool:
    """Whether root is a cgroup v2 (unified) hierarchy."""
    return (root / "cgroup.controllers").is_file() and not (root / "memory").is_dir()


# Enabled for every container where delegated, limits or not: `sandbox stats` reads
# memory.current, pids.current and io.stat, which exist only with their controller on.
ACCOUNTING = ("memory", "pids", "io")


def to_enable(resources: Resources, available: set[str]) -> list[str]:
    """The controllers a container's cgroup gets: those its limits need, then accounting."""
    wanted = list(resources.controllers())
    return wanted + [c for c in ACCOUNTING if c in available and c not in wanted]


def read_controllers(path: Path) -> set[str]:
    try:
        return set(path.joinpath("cgroup.controllers").read_text().split())
    except OSError:
        return set()


def write(path: Path, value: str) -> None:
    """Write one cgroup file; an error names the file and the value."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as e:
        raise CgroupError(f"cannot write {value!r} to {path}", context=e.strerror) from e


def apply(path: Path, resources: Resources) -> None:
    """Write every limit into the cgroup at path."""
    for limit in resources.limits():
        write(path / limit.file, limit.value)


def rmdir_tree(path: Path) -> None:
    """Remove a cgroup and its (empty) children, deepest first; gone already is fine."""
    with contextlib.suppress(FileNotFoundError):
        for child in sorted((p for p in path.iterdir() if p.is_dir()), reverse=True):
            rmdir_tree(child)
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno != errno.EBUSY:
            raise CgroupError(f"cannot remove the cgroup {path}", context=e.strerror) from e
        raise CgroupError(
            f"cannot remove the cgroup {path}",
            context="processes are still in it",
            hint="'sandbox rm -f' kills the container first",
        ) from e


def oom_killed(path: Path) -> bool:
    """Whether the kernel's OOM killer killed a process in the cgroup (memory.events)."""
    try:
        text = path.joinpath("memory.events").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip() not in ("", "0"):
            return True
    return False
