"""Named networks and the rootless network namespace that holds them (podman's "rootless netns").

A named network is a record, $XDG_DATA_HOME/sandbox/networks/NAME.json (name, subnet, bridge),
written under networks/.lock. Its bridge lives in one network namespace per user, owned by a
holder process: the holder unshares a user namespace (mapped by newuidmap with the user's full
range, exactly like a container's) and a network namespace, brings lo up, turns on forwarding,
installs `oifname tap0 masquerade` (rootless/nftables.py) and then only waits. One slirp4netns
joins it (tap0, 10.0.2.100) and gives every named network its way out; its --exit-fd write end
is held by the holder alone, so slirp4netns ends when the holder does. The holder's pid, start
time and slirp4netns's API socket are in $RUNTIME/netns/holder.json: a command that finds the
holder dead (or its pid reused) starts a new one. The holder starts on demand (the first
container on a named network) and is stopped when the last network is removed. Neither it nor
its slirp4netns is the child of the command that started them (orphans_not_ours): init reaps
them when `network rm` ends them, instead of their starter keeping them as zombies.

Why the holder's user namespace: a veth end can be moved into a container's network namespace
only from a user namespace that is an ancestor of the container's (tests/integration/
test_network_lineage.py). So a container on a named network is spawned with userns.Within:
its intermediate setns()es into the holder's user namespace and unshares its own there; its maps
are written from inside the holder's namespace. At step 9 (runtime/init.py) a child of ours
enters the holder's user and network namespaces, creates the network's bridge if the holder
does not have it yet, a veth pair whose peer goes into the container's namespace as eth0, gives
eth0 its address and a default route via the bridge, and installs the DNAT rules of the
container's published ports (slirp4netns forwards HOST:PORT to 10.0.2.100:PORT, the rule sends
that on to the container's address). Addresses are leases in $RUNTIME/netns/leases.json, taken
under the holder's lock and released when the container ends; a lease whose owner (the process
that runs the container) is gone is reclaimed. Each container's /etc/hosts names its peers and
is rewritten in place (same inode: it is bind-mounted) whenever one joins or leaves.

Pods (`kube play`, `--network container:NAME`) use the same spawn: the joining container's
intermediate, while still in the holder's user namespace (where it holds CAP_SYS_ADMIN over the
first container's), setns()es into the first container's network namespace before it unshares
its own user namespace; afterwards, as a sibling, it could not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import ipaddress
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox.errors import ContainerError, HostError, UsageError
from sandbox.rootless import idmap, syscalls, userns
from sandbox.rootless.idmap import IdMapping
from sandbox.runtime import network
from sandbox.runtime.network import NetworkConfig, PortMapping

if TYPE_CHECKING:
    from sandbox.runtime.state import ContainerStore
    from sandbox.spec import ContainerSpec

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
RESERVED = (*network.MODES, *network.NAMED_MODES, "default", "private")
UPLINK = "tap0"  # slirp4netns's interface in the holder's namespace
# The bridge's and veths' MTU: the uplink's, so a container's segments cross to slirp4netns
# whole (at the default 1500, TCP out of a named network ran at a tenth of the speed).
MTU = network.SLIRP4NETNS_MTU
DEFAULT_POOL = ipaddress.ip_network("10.89.0.0/16")
SLIRP_NETWORK = ipaddress.ip_network("10.0.2.0/24")


@dataclasses.dataclass(frozen=True)
class Network:
    name: str
    subnet: str
    bridge: str
    created: str = ""

    @property
    def gateway(self) -> str:
        return str(next(ipaddress.ip_network(self.subnet).hosts()))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"gateway": self.gateway, "driver": "bridge"}


# ---------------------------------------------------------------------------------------------
# the records


def root(data_root: Path) -> Path:
    return data_root / "networks"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_json(path: Path, value: object) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise HostError(f"cannot read {path}", context=str(e), hint="remove the file") from e


def _load(path: Path) -> Network:
    raw = _read_json(path)
    try:
        net = Network(
            name=str(raw["name"]),
            subnet=str(ipaddress.ip_network(raw["subnet"])),
            bridge=str(raw["bridge"]),
            created=str(raw.get("created", "")),
        )
    except (TypeError, KeyError, ValueError) as e:
        raise HostError(f"invalid network record {path}", context=str(e)) from e
    if not NAME_RE.match(net.bridge) or len(net.bridge) > 15:
        raise HostError(f"invalid network record {path}", context=f"bridge {net.bridge!r}")
    return net


def list_networks(data_root: Path) -> list[Network]:
    directory = root(data_root)
    if not directory.is_dir():
        return []
    return [_load(p) for p in sorted(directory.glob("*.json")) if not p.name.startswith(".")]


def lookup(data_root: Path, name: str) -> Network:
    if NAME_RE.match(name):
        path = root(data_root) / f"{name}.json"
        if path.exists():
            return _load(path)
    raise UsageError(
        f"no network named {name!r}",
        hint=f"create it with 'sandbox network create {name}' ('sandbox network ls' lists them)",
    )


def _parse_subnet(text: str) -> ipaddress.IPv4Network:
    try:
        subnet = ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        raise UsageError(
            f"invalid --subnet {text!r}", context=str(e), hint="e.g. 10.90.0.0/24"
        ) from e
    if not isinstance(subnet, ipaddress.IPv4Network) or not 8 <= subnet.prefixlen <= 29:
        raise UsageError(
            f"invalid --subnet {text!r}", hint="an IPv4 network from /8 to /29, e.g. 10.90.0.0/24"
        )
    if subnet.overlaps(SLIRP_NETWORK):
        raise UsageError(
            f"--subnet {text} overlaps slirp4netns's {SLIRP_NETWORK}", hint="choose another range"
        )
    return subnet


def create(data_root: Path, name: str, subnet: str | None = None) -> Network:
    """`sandbox network create`: the record only (the bridge appears with its first container)."""
    if not NAME_RE.match(name) or name in RESERVED:
        raise UsageError(
            f"invalid network name {name!r}",
            hint="letters, digits, '_', '.', '-' (not " + ", ".join(RESERVED) + ")",
        )
    directory = root(data_root)
    with _locked(directory / ".lock"):
        existing = list_networks(data_root)
        if any(n.name == name for n in existing):
            raise UsageError(f"network {name!r} already exists", hint="'sandbox network ls'")
        if subnet is not None:
            chosen = _parse_subnet(subnet)
            for other in existing:
                if chosen.overlaps(ipaddress.ip_network(other.subnet)):
                    raise UsageError(
                        f"--subnet {subnet} overlaps network {other.name}'s {other.subnet}",
                        hint="choose another range",
                    )
        else:
            used = [ipaddress.ip_network(n.subnet) for n in existing]
            free = (
                s
                for s in DEFAULT_POOL.subnets(new_prefix=24)
                if not any(s.overlaps(u) for u in used)
            )
            found = next(free, None)
            if found is None:
                raise UsageError("no free subnet left in 10.89.0.0/16", hint="give --subnet")
            chosen = ipaddress.IPv4Network(found)
        from sandbox.runtime import state

        net = Network(name=name, subnet=str(chosen), bridge=bridge_name(name), created=state.now())
        _write_json(directory / f"{name}.json", dataclasses.asdict(net))
    return net


def bridge_name(name: str) -> str:
    """The bridge's name in the holder's namespace (at most 15 bytes, stable for the name)."""
    import hashlib

    return "sbr" + hashlib.sha256(name.encode()).hexdigest()[:10]


def members(store: ContainerStore, name: str) -> list[str]:
    """Names of the containers, in any state, that join network NAME when they run."""
    return [
        container.name
        for container, spec in store.with_specs()
        if spec.network.mode == "bridge" and spec.network.name == name
    ]


def remove(
    data_root: Path, runtime_dir: Path, name: str, configured: list[str] | None = None
) -> Network:
    """`sandbox network rm`: refused while containers use it or are created to use it
    (configured: `members`), as a later start would attach to a network that no longer
    exists; the last one stops the holder."""
    net = lookup(data_root, name)
    directory = root(data_root)
    with _locked(directory / ".lock"), _locked(_netns_dir(runtime_dir) / ".lock"):
        users = {lease["name"] for lease in _live_leases(runtime_dir).get(name, {}).values()}
        users.update(configured or ())
        if users:
            raise UsageError(
                f"network {name!r} is in use by container(s) {', '.join(sorted(users))}",
                hint="remove those containers first, or `sandbox network rm -f` removes them",
            )
        (directory / f"{name}.json").unlink()
        holder = _running_holder(runtime_dir)
        if not list_networks(data_root):
            if holder is not None:
                _stop_holder(runtime_dir, holder)
        elif holder is not None:
            with contextlib.suppress(HostError):
                _in_holder(holder, lambda: _delete_link(net.bridge))
    return net


def resolve(data_root: Path, config: NetworkConfig) -> NetworkConfig:
    """At create: a named network must exist; its subnet goes into the container's spec."""
    if config.mode != "bridge":
        return config
    net = lookup(data_root, config.name)
    return dataclasses.replace(config, subnet=net.subnet)


def inspect(data_root: Path, runtime_dir: Path, name: str) -> dict[str, Any]:
    net = lookup(data_root, name)
    with _locked(_netns_dir(runtime_dir) / ".lock"):
        leases = _live_leases(runtime_dir).get(name, {})
    containers = {
        lease["id"]: {"name": lease["name"], "address": f"{ip}/{_prefix(net.subnet)}"}
        for ip, lease in sorted(leases.items())
    }
    return net.to_json() | {"containers": containers}


def _prefix(subnet: str) -> int:
    return ipaddress.ip_network(subnet).prefixlen


# ---------------------------------------------------------------------------------------------
# the holder


@dataclasses.dataclass(frozen=True)
class Holder:
    pid: int
    start: int
    api: str  # slirp4netns's API socket
    slirp_pid: int
    mapping: IdMapping


def _netns_dir(runtime_dir: Path) -> Path:
    path = runtime_dir / "netns"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def _alive(pid: int, start: int) -> bool:
    from sandbox.runtime import state

    if pid <= 0 or state.process_start_time(pid) != start:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[:1] != ["Z"]


def _running_holder(runtime_dir: Path) -> Holder | None:
    """The holder of holder.json if it still runs (call under the netns lock)."""
    raw = _read_json(_netns_dir(runtime_dir) / "holder.json")
    if not isinstance(raw, dict):
        return None
    try:
        pid, start = int(raw["pid"]), int(raw["start"])
        holder = Holder(pid, start, str(raw["api"]), int(raw["slirp_pid"]), _mapping())
    except (KeyError, TypeError, ValueError):
        return None
    return holder if _alive(pid, start) else None


def _mapping() -> IdMapping:
    return idmap.for_current_user("auto")


def _stop_holder(runtime_dir: Path, holder: Holder) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(holder.pid, signal.SIGKILL)  # slirp4netns follows: its exit fd closes
    with contextlib.suppress(FileNotFoundError):
        (_netns_dir(runtime_dir) / "holder.json").unlink()
    with contextlib.suppress(FileNotFoundError):
        (_netns_dir(runtime_dir) / "leases.json").unlink()


def ensure_holder(runtime_dir: Path) -> Holder:
    """The running holder, or a new one (a dead one is replaced). Call under the netns lock."""
    holder = _running_holder(runtime_dir)
    if holder is not None:
        return holder
    directory = _netns_dir(runtime_dir)
    # A new namespace: the old one's addresses and bridges went with it.
    with contextlib.suppress(FileNotFoundError):
        (directory / "leases.json").unlink()
    return _start_holder(directory, _mapping())


@contextlib.contextmanager
def orphans_not_ours() -> Iterator[None]:
    """While this runs, a process whose parent exits is not reparented to us, even when we are
    a child subreaper (a `run` or a monitor is one, to wait for its container's PID 1).

    The holder and its slirp4netns outlive whoever starts them and are stopped by another
    command (`network rm`): as our children, or our orphans, they would stay zombies until we
    exit. Started from an intermediate that exits while this runs, they go to init (or to a
    subreaper above us, such as a service manager), which reaps them when they end.
    """
    subreaper = syscalls.child_subreaper()
    if subreaper:
        syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 0)
    try:
        yield
    finally:
        if subreaper:
            syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)


def _start_holder(directory: Path, mapping: IdMapping) -> Holder:
    with orphans_not_ours():
        return _start_holder_orphaned(directory, mapping)


def _start_holder_orphaned(directory: Path, mapping: IdMapping) -> Holder:
    userns.assert_single_threaded()
    report_r, report_w = os.pipe()  # holder -> us: its pid, then "ready" or an error
    go_r, go_w = os.pipe()  # us -> holder: "mapped"
    exit_r, exit_w = os.pipe()  # slirp4netns's --exit-fd; the holder keeps the write end
    first = os.fork()
    if first == 0:  # pragma: no cover - runs in the forked child
        code = 125
        try:
            os.setsid()
            # Fork again: the holder is nobody's child once we exit.
            if os.fork() == 0:
                for fd in (report_r, go_w, exit_r):
                    os.close(fd)
                _holder(report_w, go_r, exit_w, mapping)
            code = 0
        finally:
            os._exit(code)
    for fd in (report_w, go_r, exit_w):
        os.close(fd)
    userns.wait_pid(first)
    pid = 0
    try:
        with os.fdopen(report_r, "rb", buffering=0) as report, os.fdopen(go_w, "wb", 0) as go:
            line = report.readline().decode()
            if not line.startswith("pid "):
                raise HostError("cannot start the rootless network namespace", context=line)
            pid = int(line.split()[1])
            idmap.write_mapping(pid, mapping)
            go.write(b"m")
            answer = report.read().decode(errors="replace")
        if answer != "ready":
            raise HostError(
                "cannot set up the rootless network namespace",
                context=answer[:300] or "the holder exited",
                hint="'sandbox doctor' checks user namespaces and nf_tables",
            )
        start = _start_time(pid)
        api = directory / "slirp4netns.sock"
        slirp_pid = _start_slirp4netns(pid, api, exit_r, directory / "slirp4netns.log")
        holder = Holder(pid, start, str(api), slirp_pid, mapping)
        _write_json(
            directory / "holder.json",
            {"pid": pid, "start": start, "api": str(api), "slirp_pid": slirp_pid},
        )
        return holder
    except BaseException:
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        raise
    finally:
        os.close(exit_r)


def _start_time(pid: int) -> int:
    from sandbox.runtime import state

    start = state.process_start_time(pid)
    if start is None:
        raise HostError("the rootless network namespace's holder exited at once")
    return start


def _holder(
    report: int, go: int, exit_w: int, mapping: IdMapping
) -> None:  # pragma: no cover - the holder process
    code = 125
    try:
        try:
            # Forked from a `run` whose handlers forward signals to a container: reset them.
            for signum in (signal.SIGTERM, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
                signal.signal(signum, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            syscalls.unshare(syscalls.CLONE_NEWUSER | syscalls.CLONE_NEWNET)
            os.write(report, f"pid {os.getpid()}\n".encode())
            if os.read(go, 1) != b"m":
                os._exit(125)
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
            if not mapping.single:
                os.setgroups([])
            from sandbox.rootless import network as links
            from sandbox.rootless import nftables

            links.interface_up("lo")
            # Containers' traffic is routed through here to slirp4netns's tap.
            Path("/proc/sys/net/ipv4/ip_forward").write_text("1")
            nftables.install_masquerade(UPLINK)
            os.write(report, b"ready")
        except BaseException as error:
            os.write(report, f"{type(error).__name__}: {error}".encode()[:300])
            raise
        # Only the exit fd stays open: slirp4netns quits when we do.
        os.closerange(0, exit_w)
        os.closerange(exit_w + 1, 65536)
        fd = os.open(os.devnull, os.O_RDWR)
        for target in (0, 1, 2):
            os.dup2(fd, target)
        while True:
            signal.pause()
    finally:
        os._exit(code)


def _start_slirp4netns(pid: int, api: Path, exit_r: int, log_path: Path) -> int:
    """The rootless netns's way out, nobody's child of ours (call under orphans_not_ours); it
    lives as long as the holder (which keeps the exit pipe's write end). Its pid."""
    with contextlib.suppress(FileNotFoundError):
        api.unlink()
    return network.launch_slirp4netns_detached(
        pid, UPLINK, api, log_path, exit_r, what="for the rootless network namespace"
    )


def _in_holder(holder: Holder, body: Any) -> None:
    """Run body() in a child that joined the holder's user and network namespaces."""
    failure = userns.run_joined(holder.pid, body)
    if failure is not None:
        raise HostError("cannot configure the rootless network namespace", context=failure)


def _delete_link(name: str) -> None:  # pragma: no cover - runs in the holder's namespace
    from pyroute2 import IPRoute  # type: ignore[import-untyped]

    with IPRoute() as ip:
        found = ip.link_lookup(ifname=name)
        if found:
            ip.link("del", index=found[0])


# ---------------------------------------------------------------------------------------------
# leases and /etc/hosts


def _leases(runtime_dir: Path) -> dict[str, dict[str, dict[str, Any]]]:
    raw = _read_json(_netns_dir(runtime_dir) / "leases.json")
    return raw if isinstance(raw, dict) else {}


def _live_leases(runtime_dir: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """Leases whose owner still runs (call under the netns lock); stale ones are dropped."""
    leases = _leases(runtime_dir)
    live = {
        net: {
            ip: lease
            for ip, lease in by_ip.items()
            if _alive(int(lease.get("owner", 0)), int(lease.get("owner_start", 0)))
        }
        for net, by_ip in leases.items()
    }
    live = {net: by_ip for net, by_ip in live.items() if by_ip}
    if live != leases:
        _write_json(_netns_dir(runtime_dir) / "leases.json", live)
    return live


def _rewrite_hosts(leases: dict[str, dict[str, Any]]) -> None:
    """Every running container's /etc/hosts on the network, in place (it is bind-mounted)."""
    for ip, lease in leases.items():
        peers = [(other["name"], other_ip) for other_ip, other in leases.items() if other_ip != ip]
        text = lease["hosts_base"] + "".join(f"{a}\t{n}\n" for n, a in sorted(peers))
        with contextlib.suppress(OSError):
            # O_TRUNC keeps the inode; never follow a link a container planted.
            fd = os.open(lease["hosts"], os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "w") as f:
                f.write(text)


# ---------------------------------------------------------------------------------------------
# a container on a named network (or in a pod)


@dataclasses.dataclass
class Attachment:
    """One container's place in the rootless netns, from spawn to its end."""

    holder: Holder
    within: userns.Within
    network: str = ""  # "" for --network container:NAME
    address: str = ""
    prefix: int = 0
    gateway: str = ""
    bridge: str = ""
    container_id: str = ""
    ports: tuple[PortMapping, ...] = ()
    hostfwd_ids: list[int] = dataclasses.field(default_factory=list)
    fds: list[int] = dataclasses.field(default_factory=list)

    @property
    def table(self) -> str:
        return f"sandbox_ports_{self.container_id[:12]}"

    def close_fds(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()


def attach(
    runtime_dir: Path,
    spec_id: str,
    name: str,
    hostname: str,
    config: NetworkConfig,
    hosts_path: Path,
    join_pid: int | None = None,
) -> Attachment:
    """Before the spawn: the holder (started if needed), an address (mode bridge) and the
    user namespace (and, for container:NAME, the network namespace) the spawn enters."""
    with _locked(_netns_dir(runtime_dir) / ".lock"):
        holder = ensure_holder(runtime_dir)
        fds = [os.open(f"/proc/{holder.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)]
        joins: tuple[tuple[int, int], ...] = ()
        if join_pid is not None:
            fds.append(os.open(f"/proc/{join_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC))
            joins = ((fds[1], syscalls.CLONE_NEWNET),)
        att = Attachment(
            holder, userns.Within(fds[0], holder.mapping, joins), container_id=spec_id, fds=fds
        )
        if config.mode != "bridge":
            return att
        subnet = ipaddress.ip_network(config.subnet)
        leases = _live_leases(runtime_dir)
        taken = set(leases.get(config.name, {}))
        gateway = next(subnet.hosts())
        address = next((a for a in subnet.hosts() if a != gateway and str(a) not in taken), None)
        if address is None:
            att.close_fds()
            raise ContainerError(
                f"network {config.name} has no free address in {subnet}",
                hint="remove a container from it, or create a network with a larger --subnet",
            )
        from sandbox.runtime import state

        me = os.getpid()
        leases.setdefault(config.name, {})[str(address)] = {
            "id": spec_id,
            "name": name,
            "hosts": str(hosts_path),
            "hosts_base": network.hosts_file(config, hostname, name, address=str(address)),
            "owner": me,
            "owner_start": state.process_start_time(me) or 0,
        }
        _write_json(_netns_dir(runtime_dir) / "leases.json", leases)
    bridge = bridge_name(config.name)
    att.network, att.address, att.prefix = config.name, str(address), subnet.prefixlen
    att.gateway, att.bridge, att.ports = str(gateway), bridge, config.ports
    return att


def prepare(spec: ContainerSpec, store: ContainerStore, runtime_dir: Path) -> Attachment | None:
    """For `_start_and_wait`: the attachment of a container on a named network or in a pod."""
    config = spec.network
    if not config.named:
        return None
    join_pid = None
    if config.mode == "container":
        from sandbox.runtime import state

        target = store.lookup(config.name)
        if target.status != "running" or not state.is_alive(target):
            raise ContainerError(
                f"container {config.name} is not running",
                hint=f"start it first ('sandbox start {config.name}')",
            )
        target_spec = store.load_spec(target.id)
        if not target_spec.network.named:
            raise ContainerError(
                f"cannot join the network namespace of container {config.name}",
                context="only a container on a named network (or in a pod) can share its own",
                hint=f"run {config.name} with --network NAME",
            )
        join_pid = target.pid
    hosts = dict(spec.etc_files).get("/etc/hosts", Path("/nonexistent"))
    return attach(runtime_dir, spec.id, spec.name, spec.hostname, config, hosts, join_pid)


def connect(att: Attachment, runtime_dir: Path, pid1: int) -> None:
    """Step 9: eth0 on the bridge, the published ports, the peers' /etc/hosts."""
    if not att.network:
        return
    net_fd = os.open(f"/proc/{pid1}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    att.fds.append(net_fd)
    forwards = []
    from sandbox.rootless import nftables

    for port in att.ports:
        forwards.append(
            nftables.Forward(port.protocol, port.host_port, att.address, port.container_port)
        )

    def configure() -> None:  # pragma: no cover - runs in the holder's namespaces
        from pyroute2 import IPRoute

        with IPRoute() as ip:
            found = ip.link_lookup(ifname=att.bridge)
            if not found:
                ip.link("add", ifname=att.bridge, kind="bridge", mtu=MTU)
                found = ip.link_lookup(ifname=att.bridge)
                ip.addr("add", index=found[0], address=att.gateway, prefixlen=att.prefix)
                ip.link("set", index=found[0], state="up")
            veth = f"sbv{att.container_id[:12]}"
            ip.link(
                "add",
                ifname=veth,
                kind="veth",
                mtu=MTU,
                peer={"ifname": "eth0", "net_ns_fd": net_fd, "mtu": MTU},
            )
            index = ip.link_lookup(ifname=veth)[0]
            ip.link("set", index=index, master=found[0], state="up")
        if forwards:
            nftables.install_forwards(att.table, UPLINK, forwards)
        syscalls.setns(net_fd, syscalls.CLONE_NEWNET)
        with IPRoute() as ip:
            index = ip.link_lookup(ifname="eth0")[0]
            ip.addr("add", index=index, address=att.address, prefixlen=att.prefix)
            ip.link("set", index=index, state="up")
            ip.route("add", dst="0.0.0.0/0", gateway=att.gateway)

    with _locked(_netns_dir(runtime_dir) / ".lock"):
        _in_holder(att.holder, configure)
        for port in att.ports:
            att.hostfwd_ids.append(_hostfwd(att.holder.api, port))
        _rewrite_hosts(_live_leases(runtime_dir).get(att.network, {}))


def _hostfwd(api: str, port: PortMapping) -> int:
    answer = network.slirp_api(
        api,
        {
            "execute": "add_hostfwd",
            "arguments": {
                "proto": port.protocol,
                "host_addr": port.host_ip,
                "host_port": port.host_port,
                "guest_addr": network.SLIRP_GUEST,
                "guest_port": port.host_port,
            },
        },
    )
    ret = answer.get("return")
    if "error" in answer or not isinstance(ret, dict):
        raise ContainerError(
            f"cannot publish port {port}",
            context=f"slirp4netns: {str(answer.get('error', answer))[:200]}",
            hint="is the host port free and the address one of this host's?",
        )
    return int(ret.get("id", -1))


def detach(att: Attachment, runtime_dir: Path) -> None:
    """The container ended (or failed to start): ports, address and hosts entries go."""
    att.close_fds()
    if not att.network:
        return
    with _locked(_netns_dir(runtime_dir) / ".lock"):
        holder = _running_holder(runtime_dir)
        same = holder is not None and holder.pid == att.holder.pid
        for fwd in att.hostfwd_ids:
            if same and holder is not None:
                with contextlib.suppress(ContainerError):
                    network.slirp_api(
                        holder.api, {"execute": "remove_hostfwd", "arguments": {"id": fwd}}
                    )
        if att.hostfwd_ids and same:
            from sandbox.rootless import nftables

            with contextlib.suppress(HostError):
                _in_holder(att.holder, lambda: nftables.delete_table(att.table))
        leases = _live_leases(runtime_dir)
        mine = leases.get(att.network, {})
        if mine.pop(att.address, None) is not None:
            if not mine:
                leases.pop(att.network, None)
            _write_json(_netns_dir(runtime_dir) / "leases.json", leases)
        _rewrite_hosts(mine)


def stop_all(runtime_dir: Path) -> None:
    """Stop the holder if it runs (tests, and `network rm` of the last network)."""
    with _locked(_netns_dir(runtime_dir) / ".lock"):
        holder = _running_holder(runtime_dir)
        if holder is not None:
            _stop_holder(runtime_dir, holder)


def holder_status(runtime_dir: Path) -> dict[str, Any] | None:
    with _locked(_netns_dir(runtime_dir) / ".lock"):
        holder = _running_holder(runtime_dir)
    if holder is None:
        return None
    return {"pid": holder.pid, "slirp4netns": holder.slirp_pid, "api": holder.api}


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return True
        time.sleep(0.02)
    return False


def join_order(namespaces: dict[str, int], runtime_dir: Path) -> dict[str, int]:
    """`sandbox exec` into a pod member: the holder's user namespace ("holder"), then the
    shared network namespace (we have CAP_SYS_ADMIN over its owner there), then the rest."""
    with _locked(_netns_dir(runtime_dir) / ".lock"):
        holder = _running_holder(runtime_dir)
        if holder is None:
            raise ContainerError(
                "the rootless network namespace is gone", hint="restart the pod ('kube play')"
            )
        fd = os.open(f"/proc/{holder.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    net = namespaces["net"]
    return {"holder": fd, "net": net} | {k: v for k, v in namespaces.items() if k != "net"}
