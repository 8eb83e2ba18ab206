"""cgroups: resource limits through a cgroup manager (systemd, cgroupfs or disabled).

  resources.py  the limits the command line asks for -> cgroup v2 files and controllers
  base.py       the Manager interface, the disabled manager, check(), cgroup file helpers
  cgroupfs.py   an already-delegated cgroup v2 subtree (a CI container hands one to the job)
  systemd.py    a transient scope per container from the user's systemd manager, over D-Bus

select() picks the manager from the settings and the host: "auto" prefers the systemd user
manager, then a writable cgroup of our own, else none (limits then fail with the reason and the
fix, unless the user disabled cgroups; without limits the container runs without a cgroup).
"""

from __future__ import annotations

from sandbox.rootless.cgroups.base import (
    CgroupError,
    Disabled,
    Manager,
    check,
    oom_killed,
    own_cgroup,
    unified,
)
from sandbox.rootless.cgroups.resources import Limit, Resources, from_options, parse_size

__all__ = [
    "CgroupError",
    "Disabled",
    "Limit",
    "Manager",
    "Resources",
    "by_name",
    "check",
    "from_options",
    "oom_killed",
    "own_cgroup",
    "parse_size",
    "select",
    "unified",
]

MODES = ("enabled", "disabled")
MANAGERS = ("auto", "systemd", "cgroupfs", "disabled")


def select(cgroups: str = "enabled", manager: str = "auto") -> Manager:
    """The manager for a new container: cgroups (enabled|disabled; the command line's
    --cgroups or config.yaml's cgroups) and manager (config.yaml's cgroup_manager)."""
    if cgroups == "disabled" or manager == "disabled":
        return Disabled(chosen=True)
    if not unified():
        from sandbox.rootless import features

        probe = features.probe("cgroup2")
        return Disabled(
            f"no cgroup v2 hierarchy to delegate ({probe.detail})",
            probe.fix or "boot with systemd.unified_cgroup_hierarchy=1 (cgroup v2)",
        )
    reasons: list[str] = []
    if manager in ("auto", "systemd"):
        from sandbox.rootless.cgroups.systemd import Systemd

        try:
            return Systemd.connect()
        except CgroupError as error:
            reasons.append(str(error))
    if manager in ("auto", "cgroupfs"):
        from sandbox.rootless.cgroups.cgroupfs import Cgroupfs

        found = Cgroupfs.delegated()
        if found is not None:
            return found
        reasons.append(f"this process's cgroup {own_cgroup()} is not writable by this user")
    return Disabled(
        "; ".join(reasons),
        "run under a systemd user manager that delegates cgroups ('loginctl enable-linger "
        "USER' as root starts one), or hand this user a cgroup v2 subtree",
    )


def by_name(name: str, path: str = "") -> Manager:
    """The manager that made (or will make) a container's cgroup, as its record names it;
    path is the container's cgroup when it has one."""
    if name == "cgroupfs" and path:
        from pathlib import Path

        from sandbox.rootless.cgroups.cgroupfs import Cgroupfs

        return Cgroupfs(Path(path).parent)
    if name == "systemd":
        from sandbox.rootless.cgroups.systemd import Systemd, bus_address

        address = bus_address()
        if address is not None:
            return Systemd(address)
    if name == "cgroupfs":
        from sandbox.rootless.cgroups.cgroupfs import Cgroupfs

        found = Cgroupfs.delegated()
        if found is not None:
            return found
    return Disabled()
