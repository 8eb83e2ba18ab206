"""The isolation report: what a live container actually got, read from /proc and cgroup files.

Nothing here trusts what was requested: namespaces are compared by inode with our own
(/proc/PID/ns/* against /proc/self/ns/*), the id maps, capabilities, seccomp mode and
no_new_privs come from /proc/PID/{uid_map,gid_map,status}, masked paths from the container's
own /proc/PID/mountinfo, limits from the cgroup files the kernel enforces. Only the network
mode and published ports come from the container's stored spec (the kernel does not know
them), and the report says so.

As the owner of the container's user namespace we hold CAP_SYS_PTRACE over every process in
it, so /proc/PID/* is readable even when PID 1 runs as a subordinate uid (-u) or is
non-dumpable (--init); a file that still cannot be read is reported with the kernel's error,
never guessed.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

NAMESPACES = ("user", "mnt", "pid", "net", "ipc", "uts", "cgroup", "time")
CAP_SETS = (("effective", "CapEff"), ("permitted", "CapPrm"), ("bounding", "CapBnd"),
            ("inheritable", "CapInh"), ("ambient", "CapAmb"))  # fmt: skip
SECCOMP_MODES = {"0": "disabled", "1": "strict", "2": "filter"}
# cgroup v2 file -> (controller, what it limits)
CGROUP_LIMITS = (
    ("memory.max", "memory", "memory"),
    ("memory.swap.max", "memory", "memory+swap"),
    ("cpu.max", "cpu", "cpu quota/period"),
    ("cpu.weight", "cpu", "cpu weight"),
    ("pids.max", "pids", "processes"),
    ("io.weight", "io", "io weight"),
    ("cpuset.cpus", "cpuset", "cpus"),
)
_UNLIMITED = ("max", "max 100000", "")


@dataclasses.dataclass(frozen=True)
class Namespace:
    kind: str
    inode: int | None
    host_inode: int | None
    shared_with_host: bool | None  # None: could not be read
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class CgroupLimit:
    file: str
    limits: str
    value: str | None
    enforced: bool


@dataclasses.dataclass(frozen=True)
class Cgroup:
    version: str  # "v2", "v1" or "none"
    path: str | None
    own: bool  # a cgroup of the container's own, not one it shares with other processes
    limits: tuple[CgroupLimit, ...]
    note: str


@dataclasses.dataclass(frozen=True)
class Report:
    container: str
    pid: int
    namespaces: tuple[Namespace, ...]
    uid_map: tuple[tuple[int, int, int], ...]
    gid_map: tuple[tuple[int, int, int], ...]
    cgroup: Cgroup
    seccomp: str
    seccomp_filters: int
    seccomp_profile: str | None  # from the spec: the kernel does not name a filter
    no_new_privs: bool
    capabilities: Mapping[str, tuple[str, ...]]
    capabilities_hex: Mapping[str, str]
    masked_paths: tuple[str, ...]
    readonly_paths: tuple[str, ...]
    interfaces: tuple[str, ...]
    network_mode: str | None  # from the spec
    ports: tuple[str, ...]  # from the spec
    errors: tuple[str, ...]


def _ns_inode(path: str) -> int:
    # readlink gives "net:[4026531840]"; the number is the namespace's inode.
    target = os.readlink(path)
    return int(target[target.index("[") + 1 : target.index("]")])


def read_namespaces(pid: int, proc: Path = Path("/proc")) -> tuple[Namespace, ...]:
    found = []
    for kind in NAMESPACES:
        host: int | None
        try:
            host = _ns_inode(f"{proc}/self/ns/{kind}")
        except (OSError, ValueError):
            host = None
        try:
            inode = _ns_inode(f"{proc}/{pid}/ns/{kind}")
        except FileNotFoundError:
            if host is None:  # this kernel has no such namespace type (time before 5.6)
                continue
            found.append(Namespace(kind, None, host, None, "no such namespace file"))
            continue
        except (OSError, ValueError) as e:
            found.append(Namespace(kind, None, host, None, f"cannot read: {e}"))
            continue
        found.append(Namespace(kind, inode, host, None if host is None else inode == host))
    return tuple(found)


def parse_id_map(text: str) -> tuple[tuple[int, int, int], ...]:
    rows = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 3 and all(f.isdigit() for f in fields):
            rows.append((int(fields[0]), int(fields[1]), int(fields[2])))
    return tuple(rows)


def parse_status(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def decode_caps(mask: int) -> tuple[str, ...]:
    from sandbox.rootless.caps import NAMES

    names = []
    for bit in range(64):
        if mask >> bit & 1:
            names.append(f"CAP_{NAMES[bit]}" if bit < len(NAMES) else f"CAP_{bit}")
    return tuple(names)


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal (\040 ...).
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) + 0 and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def masked_and_readonly(mountinfo: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Paths under /proc and /sys hidden from the container (a /dev/null bind or an empty
    read-only tmpfs over them) and the ones remounted read-only, from its own mountinfo."""
    masked: list[str] = []
    readonly: list[str] = []
    for line in mountinfo.splitlines():
        if " - " not in line:
            continue
        left, right = line.split(" - ", 1)
        fields, tail = left.split(), right.split()
        if len(fields) < 6 or not tail:
            continue
        root, point, options, fstype = (
            _unescape(fields[3]),
            _unescape(fields[4]),
            fields[5],
            tail[0],
        )
        if not point.startswith(("/proc/", "/sys/")) or point.startswith("/sys/fs/cgroup"):
            continue
        ro = "ro" in options.split(",")
        if root.endswith("/null") or (fstype == "tmpfs" and ro):
            masked.append(point)
        elif ro:
            readonly.append(point)
    return tuple(dict.fromkeys(masked)), tuple(dict.fromkeys(readonly))


def cgroup_paths(text: str) -> dict[str, str]:
    """/proc/PID/cgroup as {"v2": path, "<controllers>": path for v1 hierarchies}."""
    paths = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        paths["v2" if controllers == "" and parts[0] == "0" else controllers] = path
    return paths


def read_cgroup(
    pid: int, container_id: str, proc: Path = Path("/proc"), root: Path = Path("/sys/fs/cgroup")
) -> Cgroup:
    from sandbox.rootless import features

    try:
        paths = cgroup_paths((proc / str(pid) / "cgroup").read_text())
    except OSError as e:
        return Cgroup("none", None, False, (), f"cannot read /proc/{pid}/cgroup: {e.strerror}")
    layout, _ = features.cgroup_layout(_read(proc / "self" / "mountinfo") or "")
    v2 = paths.get("v2")
    own = v2 is not None and (container_id[:12] in v2 or container_id in v2)
    if layout != "unified" or v2 is None:
        where = v2 if v2 is not None else (next(iter(paths.values()), None))
        return Cgroup(
            "v1" if layout in ("legacy", "hybrid") else "none",
            where,
            False,
            (),
            f"no cgroup (not enforced): the host's cgroup layout is {layout}, so no cgroup v2 "
            "controller can be delegated to this user; no limit applies",
        )
    directory = root / v2.lstrip("/")
    enabled = set((_read(directory / "cgroup.controllers") or "").split())
    limits = []
    for file, controller, what in CGROUP_LIMITS:
        value = _read(directory / file)
        if value is None:
            continue
        enforced = own and controller in enabled and value not in _UNLIMITED
        limits.append(CgroupLimit(file, what, value, enforced))
    if own:
        note = f"its own cgroup {v2}; controllers: {' '.join(sorted(enabled)) or '(none)'}"
    else:
        note = f"no cgroup of its own (not enforced): it shares {v2} with other processes"
    return Cgroup("v2", v2, own, tuple(limits), note)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _interfaces(text: str) -> tuple[str, ...]:
    # /proc/PID/net/dev: two header lines, then "  name: counters..."
    return tuple(line.split(":", 1)[0].strip() for line in text.splitlines()[2:] if ":" in line)


def read(
    container_id: str,
    name: str,
    pid: int,
    spec: Mapping[str, Any] | None = None,
    proc: Path = Path("/proc"),
) -> Report:
    """The report for the container whose PID 1 is pid (a host pid), read live."""
    errors: list[str] = []

    def text(what: str) -> str:
        try:
            return (proc / str(pid) / what).read_text()
        except OSError as e:
            errors.append(f"/proc/{pid}/{what}: {e.strerror}")
            return ""

    status = parse_status(text("status"))
    caps: dict[str, tuple[str, ...]] = {}
    caps_hex: dict[str, str] = {}
    for label, key in CAP_SETS:
        if key in status:
            caps_hex[label] = status[key]
            caps[label] = decode_caps(int(status[key], 16))
    masked, readonly = masked_and_readonly(text("mountinfo"))
    network = (spec or {}).get("network") or {}
    ports = tuple(_port_text(p) for p in network.get("ports", ()) if isinstance(p, Mapping))
    security = (spec or {}).get("security") or {}
    profile = security.get("seccomp_profile") if isinstance(security, Mapping) else None
    report = Report(
        container=name,
        pid=pid,
        namespaces=read_namespaces(pid, proc),
        uid_map=parse_id_map(text("uid_map")),
        gid_map=parse_id_map(text("gid_map")),
        cgroup=read_cgroup(pid, container_id, proc),
        seccomp=SECCOMP_MODES.get(status.get("Seccomp", ""), "unknown"),
        seccomp_filters=int(status.get("Seccomp_filters", "0") or 0),
        seccomp_profile=str(profile) if profile else None,
        no_new_privs=status.get("NoNewPrivs") == "1",
        capabilities=caps,
        capabilities_hex=caps_hex,
        masked_paths=masked,
        readonly_paths=readonly,
        interfaces=_interfaces(text("net/dev")),
        network_mode=str(network["mode"]) if network.get("mode") else None,
        ports=ports,
        errors=tuple(errors),
    )
    return report


def _port_text(port: Mapping[str, Any]) -> str:
    host_ip = port.get("host_ip") or ""
    host = f"{host_ip}:" if host_ip else ""
    proto = port.get("protocol") or "tcp"
    return f"{host}{port.get('host_port')}->{port.get('container_port')}/{proto}"


def as_json(report: Report) -> dict[str, Any]:
    data = dataclasses.asdict(report)
    data["uid_map"] = [
        dict(zip(("inside", "outside", "size"), r, strict=True)) for r in report.uid_map
    ]
    data["gid_map"] = [
        dict(zip(("inside", "outside", "size"), r, strict=True)) for r in report.gid_map
    ]
    data["capabilities"] = {k: list(v) for k, v in report.capabilities.items()}
    return data
