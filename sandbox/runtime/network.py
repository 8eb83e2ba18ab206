"""The container's network as the parent sees it: modes, published ports, DNS and hosts files,
and the helper process (slirp4netns or pasta) that gives a network namespace its way out.

Modes: "slirp4netns" (the default where it is installed: it needs no privilege and keeps the
host's loopback closed unless asked), "pasta" (passt's namespace mode; faster),
"none" (loopback only) and "host" (no network namespace of its own).

The helper runs outside the container, as the calling user, and joins the container's user and
network namespaces by PID 1's host pid (step 9 of the protocol in runtime/init.py). slirp4netns
gets a ready pipe (so a failed start is reported with its own log) and an exit pipe whose write
end only `sandbox` holds: when sandbox exits, even by SIGKILL, the pipe closes and slirp4netns
quits, so no helper outlives its container.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import ipaddress
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox.errors import ContainerError, HostError, UsageError

if TYPE_CHECKING:
    from sandbox.rootless.nftables import Allow

MODES = ("slirp4netns", "pasta", "none", "host")
# --network NAME (a named network, runtime/networks.py) is mode "bridge"; --network
# container:NAME (share that container's network namespace, as a pod's containers do) is
# mode "container". Both run under the rootless netns holder's user namespace.
NAMED_MODES = ("bridge", "container")
_NETWORK_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
# slirp4netns's link MTU. libslirp's TCP does not scale its window (RFC 7323), so it lets the
# container have at most 65535 bytes in flight: at podman's MTU of 65520 that is a single
# segment, and the container's TCP waits for slirp4netns's ACK after each one (stop and wait,
# ~1.4 Gbit/s container->host here). At 16384 four segments fit the window, so slirp4netns
# works on one while the next arrives (~5.5 Gbit/s here; host->container is unchanged, ~6.5).
# slirp4netns#284 reports the same. Measured in benchmarks/bench.py, scenario 4.
SLIRP4NETNS_MTU = 16384
# pasta scales its window: the largest frame is the fastest (~15 Gbit/s here).
PASTA_MTU = 65520
# IPv4's minimum, and slirp4netns's maximum.
MTU_MIN, MTU_MAX = 68, 65521
SLIRP_GUEST = "10.0.2.100"
SLIRP_DNS = "10.0.2.3"
# pasta answers DNS queries sent to this address with the host's resolver (podman's choice).
PASTA_DNS = "169.254.1.1"
PORT_SYSCTL = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
HOST_RESOLV_CONF = Path("/etc/resolv.conf")
# systemd-resolved's list of the real upstream servers behind its 127.0.0.53 stub.
RESOLVED_UPSTREAMS = Path("/run/systemd/resolve/resolv.conf")
START_TIMEOUT = 30.0
_PACKAGES = {"slirp4netns": "slirp4netns", "pasta": "passt"}
_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_-]{1,63})*\.?$"
)


@dataclasses.dataclass(frozen=True)
class PortMapping:
    """One published port: host_ip:host_port on the host -> container_port in the container."""

    host_ip: str
    host_port: int
    container_port: int
    protocol: str = "tcp"

    def __str__(self) -> str:  # podman port's format
        return f"{self.container_port}/{self.protocol} -> {self.host_ip}:{self.host_port}"


@dataclasses.dataclass(frozen=True)
class EgressAllow:
    """One --egress-allow: a CIDR or a host name (resolved on the host when the container is
    created), optionally one port (TCP and UDP)."""

    target: str  # as given, without the port
    networks: tuple[str, ...]  # CIDRs: the target itself, or the name's addresses
    port: int | None = None

    @property
    def hostname(self) -> str | None:
        try:
            ipaddress.ip_network(self.target, strict=False)
        except ValueError:
            return self.target
        return None


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """Everything about a container's network, validated before any process exists."""

    mode: str
    allow_host_loopback: bool = False
    # slirp4netns:mtu=N; 0 is the helper's own default (link_mtu).
    mtu: int = 0
    ports: tuple[PortMapping, ...] = ()
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    extra_hosts: tuple[tuple[str, str], ...] = ()
    # --egress-allow: when any is given, everything else leaving the container is refused.
    egress: tuple[EgressAllow, ...] = ()
    # mode "bridge": the named network and its subnet (filled in from its record at create);
    # mode "container": the name or id of the container whose network namespace is joined.
    name: str = ""
    subnet: str = ""

    @property
    def own_namespace(self) -> bool:
        # container:NAME joins that container's namespace (userns.Within) instead.
        return self.mode not in ("host", "container")

    @property
    def named(self) -> bool:
        """Spawned under the rootless netns holder (runtime/networks.py)."""
        return self.mode in NAMED_MODES

    @property
    def helper(self) -> str | None:
        return self.mode if self.mode in ("slirp4netns", "pasta") else None

    @property
    def link_mtu(self) -> int:
        """The MTU of the link to the helper (tap0, or pasta's copy of the host's interface)."""
        return self.mtu or (PASTA_MTU if self.mode == "pasta" else SLIRP4NETNS_MTU)


# A container with only its loopback: what a spec loaded from an older record means.
NO_NETWORK = NetworkConfig("none")


# ---------------------------------------------------------------------------------------------
# parsing and validation (pure, or reading the host's sysctl/resolv.conf)


def default_mode() -> str:
    """slirp4netns where installed (no privilege, host loopback closed), else pasta, else none."""
    for mode in ("slirp4netns", "pasta"):
        if shutil.which(mode):
            return mode
    return "none"


def parse_network(text: str | None) -> tuple[str, bool, int]:
    """--network MODE[:OPTION=VALUE,...] -> (mode, allow_host_loopback, mtu or 0); a network's
    NAME or container:NAME -> ("bridge" or "container", False, 0)."""
    if text is None:
        return default_mode(), False, 0
    mode, _, raw_options = text.partition(":")
    if mode == "container" and _NETWORK_NAME_RE.match(raw_options):
        return "container", False, 0
    if mode not in (*MODES, *NAMED_MODES) and not raw_options and _NETWORK_NAME_RE.match(mode):
        return "bridge", False, 0
    if mode not in MODES:
        raise UsageError(
            f"invalid --network {text!r}",
            hint=f"use one of: {', '.join(MODES)} (slirp4netns:allow_host_loopback=true "
            "opens 10.0.2.2 to the host's 127.0.0.1)",
        )
    allow, mtu = False, 0
    for option in filter(None, raw_options.split(",")):
        key, _, value = option.partition("=")
        if mode == "slirp4netns" and key == "allow_host_loopback" and value in ("true", "false"):
            allow = value == "true"
        elif mode == "slirp4netns" and key == "mtu" and _parse_mtu(value):
            mtu = _parse_mtu(value)
        else:
            raise UsageError(
                f"invalid --network option {option!r} for {mode}",
                hint="supported: slirp4netns:allow_host_loopback=true|false,"
                f"mtu={MTU_MIN}-{MTU_MAX} (default {SLIRP4NETNS_MTU})",
            )
    return mode, allow, mtu


def _parse_mtu(text: str) -> int:
    """A valid MTU's value, or 0."""
    value = int(text) if text.isdigit() else 0
    return value if MTU_MIN <= value <= MTU_MAX else 0


def _port_range(text: str, what: str, spec: str) -> tuple[int, int]:
    first, dash, last = text.partition("-")
    try:
        low = int(first)
        high = int(last) if dash else low
    except ValueError:
        raise UsageError(f"invalid {what} {text!r} in -p {spec}") from None
    if not (1 <= low <= high <= 65535):
        raise UsageError(f"invalid {what} {text!r} in -p {spec}", hint="ports are 1-65535")
    return low, high


def parse_publish(spec: str) -> list[PortMapping]:
    """-p [IP:][HOSTPORT:]CONTAINERPORT[/tcp|/udp], ranges as LOW-HIGH on either side."""
    body, _, protocol = spec.partition("/")
    protocol = protocol or "tcp"
    if protocol not in ("tcp", "udp"):
        raise UsageError(f"invalid protocol {protocol!r} in -p {spec}", hint="use /tcp or /udp")
    if body.startswith("["):  # [IPv6]:HOST:CONTAINER
        address, close, rest = body[1:].partition("]")
        if not close or not rest.startswith(":"):
            raise UsageError(f"invalid -p {spec}", hint="use [IP:][HOSTPORT:]CONTAINERPORT")
        parts = [address, *rest[1:].split(":")]
    else:
        parts = body.split(":")
    if len(parts) == 1:
        host_ip, host_text, container_text = "", "", parts[0]
    elif len(parts) == 2:
        host_ip, host_text, container_text = "", parts[0], parts[1]
    elif len(parts) == 3:
        host_ip, host_text, container_text = parts
    else:
        raise UsageError(f"invalid -p {spec}", hint="use [IP:][HOSTPORT:]CONTAINERPORT[/udp]")
    if host_ip:
        try:
            ipaddress.ip_address(host_ip)
        except ValueError:
            raise UsageError(f"invalid host address {host_ip!r} in -p {spec}") from None
    low, high = _port_range(container_text, "container port", spec)
    if host_text:
        host_low, host_high = _port_range(host_text, "host port", spec)
    else:
        host_low, host_high = low, high  # podman picks a random port; we keep the same one
    if host_high - host_low != high - low:
        raise UsageError(
            f"invalid -p {spec}: the host and container ranges differ in size",
            hint="give ranges of the same length, e.g. -p 8000-8002:80-82",
        )
    return [
        PortMapping(host_ip or "0.0.0.0", host_low + i, low + i, protocol)
        for i in range(high - low + 1)
    ]


def unprivileged_port_start(path: Path = PORT_SYSCTL) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 1024


def parse_add_host(text: str) -> tuple[str, str]:
    name, sep, address = text.partition(":")
    try:
        ipaddress.ip_address(address)
    except ValueError:
        address = ""
    if not sep or not name or not address:
        raise UsageError(f"invalid --add-host {text!r}", hint="use NAME:IP, e.g. db:10.0.2.2")
    return name, address


def build(
    network: str | None,
    publish: Sequence[str] = (),
    dns: Sequence[str] = (),
    dns_search: Sequence[str] = (),
    add_host: Sequence[str] = (),
    egress_allow: Sequence[str] = (),
) -> NetworkConfig:
    """Validate the network options together; nothing is started or bound here (host names
    in --egress-allow are resolved here, on the host)."""
    mode, allow, mtu = parse_network(network)
    if egress_allow and mode == "host":
        raise UsageError(
            "--egress-allow needs a network namespace of the container's own",
            hint="drop --network host (the rules live in the container's namespace)",
        )
    ports: list[PortMapping] = []
    for spec in publish:
        ports += parse_publish(spec)
    if ports and mode in ("none", "host"):
        raise UsageError(
            f"-p has no effect with --network {mode}",
            hint="publish ports with --network slirp4netns or pasta",
        )
    seen: set[tuple[str, int, str]] = set()
    lowest = unprivileged_port_start()
    for port in ports:
        key = (port.host_ip, port.host_port, port.protocol)
        if key in seen:
            raise UsageError(f"host port {port.host_port}/{port.protocol} is published twice")
        seen.add(key)
        if port.host_port < lowest:
            raise UsageError(
                f"cannot publish host port {port.host_port}: ports below {lowest} are "
                "privileged (sysctl net.ipv4.ip_unprivileged_port_start)",
                hint=f"use a host port >= {lowest} (-p {port.host_port + 8000}:"
                f"{port.container_port}), or as root: sysctl -w "
                f"net.ipv4.ip_unprivileged_port_start={port.host_port}",
            )
    for server in dns:
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise UsageError(f"invalid --dns {server!r}", hint="give an IP address") from None
    if mode == "container" and ports:
        raise UsageError(
            "-p cannot be used with --network container:NAME",
            hint="publish the ports on the container whose network is shared",
        )
    config = NetworkConfig(
        mode=mode,
        name={"bridge": network, "container": (network or "")[10:]}.get(mode, "") or "",
        allow_host_loopback=allow,
        mtu=mtu,
        ports=tuple(ports),
        dns=tuple(dns),
        dns_search=tuple(dns_search),
        extra_hosts=tuple(parse_add_host(h) for h in add_host),
        egress=tuple(parse_egress(e) for e in egress_allow),
    )
    require_helper(config)
    return config


def _split_port(text: str) -> tuple[str, int | None]:
    """TARGET[:PORT]; an IPv6 target with a port is written [TARGET]:PORT."""
    if text.startswith("["):
        target, close, rest = text[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            raise UsageError(f"invalid --egress-allow {text!r}", hint="use [IPV6/LEN]:PORT")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        target, _, port_text = text.partition(":")
    else:
        target, port_text = text, None  # a name, an IPv4 CIDR, or an IPv6 one without port
    if port_text is None:
        return target, None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise UsageError(f"invalid port {port_text!r} in --egress-allow {text}", hint="1-65535")
    return target, int(port_text)


def parse_egress(text: str, resolve: bool = True) -> EgressAllow:
    """--egress-allow CIDR[:PORT] or HOSTNAME[:PORT]; a name is resolved now, on the host."""
    target, port = _split_port(text.strip())
    if not target:
        raise UsageError(f"invalid --egress-allow {text!r}", hint="give a CIDR or a host name")
    try:
        network = ipaddress.ip_network(target, strict=False)
    except ValueError:
        network = None
    if network is not None:
        return EgressAllow(target, (str(network),), port)
    if not _HOSTNAME_RE.match(target):
        raise UsageError(
            f"invalid --egress-allow {text!r}",
            hint="give CIDR[:PORT] (10.0.2.2/32:8080) or HOSTNAME[:PORT] (deb.debian.org:80)",
        )
    if not resolve:
        return EgressAllow(target, (), port)
    try:
        infos = socket.getaddrinfo(target, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise UsageError(
            f"cannot resolve {target!r} for --egress-allow",
            context=str(e),
            hint="check the name, or give its address as a CIDR",
        ) from e
    addresses = dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos)
    networks = tuple(str(ipaddress.ip_network(a)) for a in addresses)
    return EgressAllow(target, networks, port)


def require_helper(config: NetworkConfig) -> None:
    """The helper program must be installed: say which package ships it (exit 125)."""
    helper = config.helper
    if helper is not None and shutil.which(helper) is None:
        raise HostError(
            f"--network {helper} needs {helper}, which is not on PATH",
            hint=f"install it (apt install {_PACKAGES[helper]}), or use --network none",
        )


def check_ports_free(ports: Sequence[PortMapping]) -> None:
    """Bind each host port once, now: a port in use fails before the container starts."""
    for port in ports:
        family = socket.AF_INET6 if ":" in port.host_ip else socket.AF_INET
        kind = socket.SOCK_STREAM if port.protocol == "tcp" else socket.SOCK_DGRAM
        with socket.socket(family, kind) as probe:
            if kind == socket.SOCK_STREAM:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((port.host_ip, port.host_port))
            except OSError as e:
                hint = (
                    "choose another host port, or stop what listens there"
                    if e.errno == errno.EADDRINUSE
                    else "check the address is one of this host's"
                )
                raise UsageError(
                    f"cannot publish {port.host_ip}:{port.host_port}/{port.protocol}",
                    context=e.strerror,
                    hint=hint,
                ) from e


# ---------------------------------------------------------------------------------------------
# /etc/resolv.conf and /etc/hosts for the container


def _nameservers(text: str) -> tuple[list[str], list[str], list[str]]:
    """(nameservers, search domains, option lines) of a resolv.conf text."""
    servers: list[str] = []
    search: list[str] = []
    options: list[str] = []
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["nameserver"] and len(words) > 1:
            servers.append(words[1])
        elif words[:1] in (["search"], ["domain"]):
            search += words[1:]
        elif words[:1] == ["options"]:
            options.append(line.strip())
    return servers, search, options


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def resolv_conf(
    config: NetworkConfig,
    host: str | None = None,
    upstreams: str | None = None,
) -> str:
    """The container's resolv.conf: our forwarder (or --dns), with the host's search domains.

    A loopback resolver (systemd-resolved's 127.0.0.53) cannot be reached from another network
    namespace, and slirp4netns refuses host loopback by default: there we name the upstream
    servers systemd-resolved itself uses.
    """
    host = _read(HOST_RESOLV_CONF) if host is None else host
    servers, search, options = _nameservers(host)
    if config.mode == "host":
        chosen = list(config.dns) or servers
    elif config.dns:
        chosen = list(config.dns)
    elif config.mode == "pasta":
        chosen = [PASTA_DNS]
    else:
        reachable = [s for s in servers if not _is_loopback(s)]
        if servers and not reachable:
            # Only a loopback stub (systemd-resolved): its upstream servers are reachable.
            upstream = _read(RESOLVED_UPSTREAMS) if upstreams is None else upstreams
            reachable = [s for s in _nameservers(upstream)[0] if not _is_loopback(s)]
            # slirp4netns sends 10.0.2.3's queries from the host, so even the stub answers
            # them; the upstreams follow as a fallback.
            chosen = ([SLIRP_DNS] if config.mode == "slirp4netns" else []) + reachable
        elif config.mode in ("slirp4netns", *NAMED_MODES):
            # Named networks go out through the holder's slirp4netns.
            chosen = [SLIRP_DNS]  # slirp4netns forwards to the host's resolver
        else:
            chosen = reachable
    search = list(config.dns_search) or search
    if search == ["."]:
        search = []
    lines = []
    if search:
        lines.append("search " + " ".join(search))
    lines += [f"nameserver {s}" for s in chosen]
    lines += options
    return "\n".join(lines) + "\n"


def hosts_file(
    config: NetworkConfig,
    hostname: str,
    name: str,
    host: str | None = None,
    address: str | None = None,
    peers: Sequence[tuple[str, str]] = (),
) -> str:
    """The container's /etc/hosts: localhost, its own names, --add-host entries; on a named
    network its own address there and its peers' (name, address)."""
    names = " ".join(dict.fromkeys((hostname, name)))
    if config.mode == "host":
        base = _read(Path("/etc/hosts")) if host is None else host
        if base and not base.endswith("\n"):
            base += "\n"
        own = f"127.0.1.1\t{names}\n"
    else:
        base = (
            "127.0.0.1\tlocalhost localhost.localdomain\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n"
        )
        if address is None:
            address = SLIRP_GUEST if config.mode == "slirp4netns" else "127.0.1.1"
        own = f"{address}\t{names}\n"
        own += "".join(f"{ip}\t{peer}\n" for peer, ip in peers)
    extra = "".join(f"{address}\t{n}\n" for n, address in config.extra_hosts)
    # Names allowed by --egress-allow resolve to the addresses the rules allow, whatever DNS
    # says later.
    for rule in config.egress:
        if rule.hostname is not None:
            extra += "".join(f"{n.split('/')[0]}\t{rule.hostname}\n" for n in rule.networks)
    return base + extra + own


# ---------------------------------------------------------------------------------------------
# the helper process


class Helper:
    """A running slirp4netns or pasta serving one container; stop() ends it."""

    def __init__(self, name: str, process: subprocess.Popen[bytes] | None, pid: int | None):
        self.name = name
        self.process = process
        self.pid = pid
        self.exit_w: int | None = None
        self.files: list[Path] = []

    def stop(self, *, wait: bool = True) -> None:
        """End the helper. wait=False tells it to quit and returns at once: its exit closes
        the container's tap device, which the kernel unregisters (RCU grace periods) before
        the process is gone, ~20 ms; a caller that exits right away leaves that to init."""
        if self.exit_w is not None:
            os.close(self.exit_w)  # slirp4netns's --exit-fd: it quits on EOF
            self.exit_w = None
        elif self.process is not None and self.process.poll() is None:
            self.process.terminate()
        if self.process is not None and wait:
            if not _exited(self.process, timeout=5):
                self.process.kill()
            self.process.wait()
        for path in self.files:
            with contextlib.suppress(OSError):
                path.unlink()


def _exited(process: subprocess.Popen[bytes], timeout: float) -> bool:
    """Whether process ends within timeout, without reaping it (Popen.wait(timeout) polls
    with doubling sleeps: up to ~20 ms late per run)."""
    from sandbox.rootless import syscalls

    if process.returncode is not None:
        return True
    # Still ours to reap (only Popen waits for it), so the pid cannot have been reused.
    return syscalls.exits_within(process.pid, timeout)


def start(config: NetworkConfig, pid: int, state_dir: Path, runtime_dir: Path) -> Helper | None:
    """Step 9: give PID 1's network namespace its way out, publish its ports, and install the
    egress filter (before the command runs: the parent sends "start" only after this)."""
    helper: Helper | None = None
    if config.helper == "slirp4netns":
        helper = _start_slirp4netns(config, pid, state_dir, runtime_dir)
    elif config.helper == "pasta":
        helper = _start_pasta(config, pid, state_dir)
    if config.egress:
        try:
            apply_egress(config, pid)
        except BaseException:
            if helper is not None:
                helper.stop()
            raise
    return helper


# ---------------------------------------------------------------------------------------------
# the egress policy


def egress_allowed(config: NetworkConfig) -> list[Allow]:
    """What the filter lets out: each --egress-allow, and nothing else. Not even DNS to the
    container's resolver (it would relay any name, so any data, to the host's resolver and
    beyond): allowed names are pinned in /etc/hosts; `--egress-allow 10.0.2.3:53` opens it."""
    from sandbox.rootless.nftables import Allow

    return [Allow(n, rule.port) for rule in config.egress for n in rule.networks]


def apply_egress(config: NetworkConfig, pid: int) -> None:
    """Install the egress filter in PID 1's network namespace, from a child of ours that joins
    its user namespace (we own it, so setns gives the child every capability there) and then
    its network namespace. The container itself lacks CAP_NET_ADMIN: it cannot lift the rules.
    """
    from sandbox.rootless import nftables, userns

    allowed = egress_allowed(config)
    failure = userns.run_joined(pid, lambda: nftables.install(allowed))
    if failure is not None:
        raise HostError(
            "cannot install the --egress-allow rules in the container's network namespace",
            context=failure,
            hint="the kernel needs nf_tables (CONFIG_NF_TABLES, CONFIG_NFT_REJECT_INET, "
            "CONFIG_NFT_CT); 'sandbox doctor' checks it",
        )


def _program(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise HostError(
            f"--network {name} needs {name}, which is not on PATH",
            hint=f"install it (apt install {_PACKAGES[name]}), or use --network none",
        )
    return path


def _api_socket_path(state_dir: Path, runtime_dir: Path) -> Path:
    # sun_path holds 107 bytes; a deep XDG_DATA_HOME would not fit.
    path = state_dir / "slirp4netns.sock"
    if len(os.fsencode(path)) < 100:
        return path
    path = runtime_dir / f"slirp-{state_dir.name[:16]}.sock"
    if len(os.fsencode(path)) < 100:
        return path
    # Both are deep (an XDG_RUNTIME_DIR far down a tree): a private directory that fits.
    from sandbox.config import private_dir

    return private_dir(Path(f"/tmp/sandbox-{os.getuid()}")) / f"slirp-{state_dir.name[:16]}.sock"


def _slirp4netns_argv(
    pid: int,
    interface: str,
    api: Path,
    ready_w: int,
    exit_r: int,
    allow_host_loopback: bool,
    mtu: int = SLIRP4NETNS_MTU,
) -> list[str]:
    # podman's options (4.3, rootless) but for the MTU (see SLIRP4NETNS_MTU) and --enable-ipv6
    # (no IPv6 way out here), plus an API socket (published ports).
    argv = [
        _program("slirp4netns"),
        "--configure",
        f"--mtu={mtu}",
        "--enable-sandbox",
        "--enable-seccomp",
        f"--api-socket={api}",
        f"--ready-fd={ready_w}",
        f"--exit-fd={exit_r}",
    ]
    if not allow_host_loopback:
        argv.append("--disable-host-loopback")
    return [*argv, str(pid), interface]


def _popen_slirp4netns(
    argv: list[str], log_path: Path, fds: tuple[int, int]
) -> subprocess.Popen[bytes]:
    # A session (so a process group) of its own: a ^C typed at `sandbox run` is for the
    # container (sandbox forwards it), not for the helper, which must keep the network up
    # while the container handles it; it ends through --exit-fd. The session is also its own
    # scheduler autogroup: a transfer is bound by this one process's CPU, which it then does
    # not share with whatever else runs in the caller's terminal session.
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=fds,
            close_fds=True,
            start_new_session=True,
        )


def launch_slirp4netns(
    pid: int,
    interface: str,
    api: Path,
    log_path: Path,
    exit_r: int,
    *,
    allow_host_loopback: bool = False,
    mtu: int = SLIRP4NETNS_MTU,
    what: str = "the container's network",
) -> subprocess.Popen[bytes]:
    """slirp4netns against pid's network namespace, as our child, running once it says it is
    ready.

    It exits when the write end of exit_r's pipe closes (--exit-fd), so whoever holds that end
    decides its life. A failed start is killed and reported with the last lines of its log.
    """
    ready_r, ready_w = os.pipe()
    try:
        argv = _slirp4netns_argv(pid, interface, api, ready_w, exit_r, allow_host_loopback, mtu)
        process = _popen_slirp4netns(argv, log_path, (ready_w, exit_r))
    except BaseException as e:
        os.close(ready_r)
        if isinstance(e, OSError):
            raise HostError(
                "cannot start slirp4netns", context=e.strerror, hint="apt install slirp4netns"
            ) from e
        raise
    finally:
        os.close(ready_w)

    def kill() -> None:
        process.kill()
        process.wait()

    _await_slirp4netns(ready_r, log_path, what, kill)
    return process


def launch_slirp4netns_detached(
    pid: int, interface: str, api: Path, log_path: Path, exit_r: int, *, what: str
) -> int:
    """slirp4netns as launch_slirp4netns starts it, but nobody's child of ours: a short-lived
    intermediate starts it and exits, so it is reparented to init (or to the nearest subreaper
    above us, see networks.orphans_not_ours) and reaped there when it ends. Its pid, once it
    is ready."""
    from sandbox.rootless import userns

    userns.assert_single_threaded()  # fork() of a threaded Python process can deadlock
    _program("slirp4netns")  # not installed: fail before any pipe or process exists
    ready_r, ready_w = os.pipe()
    report_r, report_w = os.pipe()
    argv = _slirp4netns_argv(pid, interface, api, ready_w, exit_r, False)
    intermediate = os.fork()
    if intermediate == 0:  # pragma: no cover - runs in the forked child
        code = 125
        try:
            os.close(ready_r)
            os.close(report_r)
            try:
                process = _popen_slirp4netns(argv, log_path, (ready_w, exit_r))
                os.write(report_w, f"pid {process.pid}".encode())
            except OSError as e:
                os.write(report_w, f"error {e.strerror}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(report_w)
    userns.wait_pid(intermediate)
    with os.fdopen(report_r, "rb") as report:
        answer = report.read(200).decode(errors="replace")
    if not answer.startswith("pid "):
        os.close(ready_r)
        raise HostError(
            "cannot start slirp4netns",
            context=answer.removeprefix("error ") or "the launcher exited",
            hint="apt install slirp4netns",
        )
    slirp_pid = int(answer.split()[1])

    def kill() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(slirp_pid, signal.SIGKILL)  # init reaps it

    _await_slirp4netns(ready_r, log_path, what, kill)
    return slirp_pid


def _await_slirp4netns(ready_r: int, log_path: Path, what: str, kill: Callable[[], None]) -> None:
    """Wait for slirp4netns's "1" on its ready fd (closes ready_r); kill it on a failure."""
    try:
        ready = _wait_readable(ready_r, START_TIMEOUT)
        if not ready or os.read(ready_r, 1) != b"1":
            kill()
            log_lines = _read(log_path).strip().splitlines()
            raise HostError(
                f"slirp4netns failed to start {what} "
                f"({'timed out' if not ready else 'exited before ready'})",
                context=" / ".join(log_lines[-5:]) or "no output",
                hint=f"see {log_path}; 'sandbox doctor' checks /dev/net/tun; "
                f"apt install {_PACKAGES['slirp4netns']} (or --network none)",
            )
    finally:
        os.close(ready_r)


def _start_slirp4netns(
    config: NetworkConfig, pid: int, state_dir: Path, runtime_dir: Path
) -> Helper:
    api = _api_socket_path(state_dir, runtime_dir)
    exit_r, exit_w = os.pipe()
    try:
        process = launch_slirp4netns(
            pid,
            "tap0",
            api,
            state_dir / "slirp4netns.log",
            exit_r,
            allow_host_loopback=config.allow_host_loopback,
            mtu=config.link_mtu,
        )
    except BaseException:
        os.close(exit_w)
        raise
    finally:
        os.close(exit_r)
    helper = Helper("slirp4netns", process, process.pid)
    helper.exit_w = exit_w
    helper.files = [api]
    try:
        for port in config.ports:
            _slirp_add_hostfwd(api, port)
    except BaseException:
        helper.stop()
        raise
    return helper


def _wait_readable(fd: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        try:
            readable, _, _ = select.select([fd], [], [], left)
        except InterruptedError:
            continue
        return bool(readable)


def _fail_start(helper: Helper, log_path: Path, what: str) -> None:
    if helper.process is not None and helper.process.poll() is None:
        helper.process.kill()
    if helper.process is not None:
        helper.process.wait()
    log = _read(log_path).strip().splitlines()
    raise HostError(
        f"{helper.name} failed to start the container's network ({what})",
        context=" / ".join(log[-5:]) or "no output",
        hint=f"see {log_path}; 'sandbox doctor' checks /dev/net/tun; "
        f"apt install {_PACKAGES[helper.name]} (or --network none)",
    )


def slirp_api(api: str | Path, request: dict[str, Any]) -> dict[str, Any]:
    """One request to slirp4netns's API socket; its (bounded) JSON answer, which may say error."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(api))
            sock.sendall(json.dumps(request).encode())
            sock.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
                if len(reply) > 65536:
                    break
        answer = json.loads(reply or b"{}")
    except (OSError, ValueError) as e:
        raise ContainerError("cannot reach slirp4netns's API socket", context=str(e)) from e
    return answer if isinstance(answer, dict) else {"error": answer}


def _slirp_add_hostfwd(api: Path, port: PortMapping) -> None:
    request = {
        "execute": "add_hostfwd",
        "arguments": {
            "proto": port.protocol,
            "host_addr": port.host_ip,
            "host_port": port.host_port,
            "guest_addr": SLIRP_GUEST,
            "guest_port": port.container_port,
        },
    }
    try:
        answer = slirp_api(api, request)
    except ContainerError as e:
        raise ContainerError(f"cannot publish port {port}", context=e.context) from e
    if "error" in answer or "return" not in answer:
        detail = answer.get("error", answer)
        raise ContainerError(
            f"cannot publish port {port}",
            context=f"slirp4netns: {str(detail)[:200]}",
            hint="is the host port free and the address one of this host's?",
        )


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    from sandbox.rootless import syscalls

    syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)


def _start_pasta(config: NetworkConfig, pid: int, state_dir: Path) -> Helper:
    program = _program("pasta")
    pid_file = state_dir / "pasta.pid"
    log_path = state_dir / "pasta.log"
    argv = [program, "--config-net", "--quiet", "--foreground", "--mtu", str(config.link_mtu)]
    argv += ["--no-map-gw"]
    argv += ["--dns-forward", PASTA_DNS, "--pid", str(pid_file)]
    tcp = [p for p in config.ports if p.protocol == "tcp"]
    udp = [p for p in config.ports if p.protocol == "udp"]
    for flag, ports in (("-t", tcp), ("-u", udp)):
        if not ports:
            argv += [flag, "none"]  # pasta's default "auto" would publish every listener
        for p in ports:
            address = "" if p.host_ip in ("0.0.0.0", "::") else f"{p.host_ip}/"
            argv += [flag, f"{address}{p.host_port}:{p.container_port}"]
    # The container reaches the host's loopback only through these; keep them closed.
    argv += ["-T", "none", "-U", "none", str(pid)]
    try:
        with open(log_path, "wb") as log:
            # pasta has no exit fd and does not notice a PID-named namespace going away: it
            # stays our child and dies with us (PDEATHSIG; this process has one thread). A
            # session of its own, as slirp4netns: a ^C is for the container.
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                close_fds=True,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
    except OSError as e:
        raise HostError("cannot start pasta", context=e.strerror, hint=f"see {log_path}") from e
    helper = Helper("pasta", process, process.pid)
    helper.files = [pid_file]
    # pasta writes its pid file once the namespace is configured: that is our ready signal.
    deadline = time.monotonic() + START_TIMEOUT
    while not _read(pid_file).strip():
        if process.poll() is not None or time.monotonic() > deadline:
            _fail_start(helper, log_path, "timed out" if process.poll() is None else "exited")
        time.sleep(0.005)
    return helper
