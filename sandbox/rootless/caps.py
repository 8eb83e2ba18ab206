"""Linux capabilities: names, the default set, and applying a set to the calling process.

A container's root holds every capability of its user namespace until we drop them. We keep
podman's rootless default (DEFAULT, CapEff 00000000800405fb) in the bounding, permitted,
effective and inheritable sets and clear the ambient set. execve then recomputes the sets from
the bounding set: uid 0 ends with bounding | inheritable, any other uid with nothing (as with
podman and Docker, a non-root user gets CapEff 0 and CapBnd = the container's set).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable

from sandbox.errors import UsageError

# <linux/capability.h>, in bit order.
NAMES = (
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
)
NUMBERS = {name: bit for bit, name in enumerate(NAMES)}

# podman's default for rootless containers (containers.conf default_capabilities).
DEFAULT = (
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
)

SYS_ADMIN = NUMBERS["SYS_ADMIN"]
SETPCAP = NUMBERS["SETPCAP"]

# <linux/prctl.h>
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_KEEPCAPS = 8
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4


def last_cap() -> int:
    """The highest capability this kernel knows (newer kernels know more than NAMES)."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return len(NAMES) - 1


def all_names() -> tuple[str, ...]:
    return NAMES[: last_cap() + 1]


def normalise(name: str, option: str = "--cap-add") -> str:
    """'cap_net_raw', 'NET_RAW', 'CAP_NET_RAW' -> 'NET_RAW'; 'all' -> 'ALL'."""
    upper = name.strip().upper()
    if upper.startswith("CAP_"):
        upper = upper[4:]
    if upper == "ALL" or upper in NUMBERS:
        return upper
    raise UsageError(
        f"unknown capability {name!r} in {option}",
        hint="use a name from capabilities(7), with or without CAP_, or ALL",
    )


def resolve(
    add: Iterable[str] = (), drop: Iterable[str] = (), *, privileged: bool = False
) -> tuple[str, ...]:
    """The container's set as podman computes it: drops first (ALL empties), then adds."""
    adds = [normalise(n, "--cap-add") for n in add]
    drops = [normalise(n, "--cap-drop") for n in drop]
    everything = all_names()
    if privileged:
        current = set(everything)
    elif "ALL" in drops:
        current = set()
    else:
        current = set(DEFAULT) - set(drops)
    if "ALL" in adds:
        current |= set(everything)
    else:
        current |= set(adds)
    unknown = current - set(everything)
    if unknown:
        raise UsageError(
            f"this kernel does not know capability {sorted(unknown)[0]}",
            context=f"/proc/sys/kernel/cap_last_cap is {last_cap()}",
        )
    return tuple(n for n in NAMES if n in current)


def mask(names: Iterable[str]) -> int:
    bits = 0
    for name in names:
        bits |= 1 << NUMBERS[name]
    return bits


def to_hex(names: Iterable[str]) -> str:
    """The form /proc/PID/status shows (CapEff: 00000000800405fb)."""
    return f"{mask(names):016x}"


def capset(effective: int, permitted: int, inheritable: int) -> None:
    from sandbox.rootless import syscalls

    syscalls.capset(effective, permitted, inheritable)


def drop_bounding(keep: int) -> None:
    """Remove every capability not in keep from the bounding set (needs CAP_SETPCAP)."""
    from sandbox.rootless import syscalls

    for bit in range(last_cap() + 1):
        if not keep & (1 << bit):
            syscalls.prctl(PR_CAPBSET_DROP, bit)


def clear_ambient() -> None:
    from sandbox.rootless import syscalls

    # Kernels before 4.3 have no ambient set: nothing to clear.
    with contextlib.suppress(OSError):
        syscalls.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)


def keep_caps(on: bool) -> None:
    """PR_SET_KEEPCAPS: keep the permitted set across setresuid away from uid 0."""
    from sandbox.rootless import syscalls

    syscalls.prctl(PR_SET_KEEPCAPS, int(on))


def current() -> dict[str, int]:
    """The calling process's sets, as /proc/self/status shows them (for tests and debugging)."""
    sets: dict[str, int] = {}
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("Cap"):
                key, _, value = line.partition(":")
                sets[key] = int(value.strip(), 16)
    return sets
