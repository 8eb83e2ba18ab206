"""ContainerSpec: everything a container needs, frozen, validated before any process exists.

RunOptions is what the command line said; build() combines it with the image's config and
the settings into a ContainerSpec, or raises a UsageError saying which option is wrong and
how to fix it. Nothing here forks, mounts or writes; it only reads the host paths the user
named, to check they exist.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sandbox.errors import UsageError
from sandbox.rootless.cgroups.resources import NO_LIMITS, Resources
from sandbox.rootless.idmap import IdMapping
from sandbox.rootless.mounts import Mount
from sandbox.runtime.network import NO_NETWORK, NetworkConfig
from sandbox.runtime.network import build as build_network
from sandbox.security import DEFAULT_SECURITY, Security
from sandbox.security import build as build_security

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
_HOSTNAME_RE = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9.-]{0,62})$")
_ENV_KEY_RE = re.compile(r"^[^=\s]+$")

NAMESPACES = ("mount", "pid", "net", "ipc", "uts", "cgroup")

# The mounts every container gets, before the user's (OCI runtime spec order).
_CGROUP_OPTIONS = ("nosuid", "noexec", "nodev", "ro")
_TMPFS_DEV = ("nosuid", "strictatime", "mode=755", "size=65536k")


def default_mounts() -> tuple[Mount, ...]:
    return (
        Mount("/proc", "proc", "proc", ("nosuid", "noexec", "nodev")),
        Mount("/dev", "tmpfs", "tmpfs", _TMPFS_DEV),
        Mount(
            "/dev/pts",
            "devpts",
            "devpts",
            ("nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"),
        ),
        Mount(
            "/dev/shm", "tmpfs", "shm", ("nosuid", "noexec", "nodev", "mode=1777", "size=65536k")
        ),
        Mount("/dev/mqueue", "mqueue", "mqueue", ("nosuid", "noexec", "nodev")),
        Mount("/sys", "sysfs", "sysfs", ("nosuid", "noexec", "nodev", "ro")),
    )


# eq=False: options are read, never compared or hashed, and the generated __eq__ and __hash__
# of 38 fields cost ~0.3 ms of every start (run and exec import this module).
@dataclasses.dataclass(frozen=True, eq=False)
class RunOptions:
    """`sandbox run`'s options, exactly as given (validated by build())."""

    image: str
    command: tuple[str, ...] = ()
    remove: bool = False
    interactive: bool = False
    tty: bool = False
    name: str | None = None
    env: tuple[str, ...] = ()
    env_files: tuple[str, ...] = ()
    workdir: str | None = None
    user: str | None = None
    hostname: str | None = None
    volumes: tuple[str, ...] = ()
    tmpfs: tuple[str, ...] = ()
    read_only: bool = False
    entrypoint: str | None = None
    init: bool = False
    rootfs: bool = False
    userns: str | None = None
    detach: bool = False
    restart: str = "no"  # no | always | unless-stopped | on-failure[:N] (detached only)
    network: str | None = None  # MODE[:OPTIONS]; None: the default (runtime/network.py)
    publish: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    add_host: tuple[str, ...] = ()
    egress_allow: tuple[str, ...] = ()  # CIDR[:PORT] or HOSTNAME[:PORT]; else all refused
    resources: Resources = NO_LIMITS  # --memory, --cpus, ... (cgroups.from_options)
    cgroups: str | None = None  # --cgroups enabled|disabled; None: config.yaml's
    pull: str = "missing"  # --pull always|missing|never|newer (images/pull.py)
    tls_verify: bool | None = None  # --tls-verify; None: registries.yaml decides
    platform: str | None = None  # --platform OS/ARCH[/VARIANT]; None: the host's
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    privileged: bool = False
    security_opt: tuple[str, ...] = ()  # seccomp=..., no-new-privileges, mask=, unmask=
    ulimits: tuple[str, ...] = ()  # NAME=SOFT[:HARD]
    umask: str | None = None  # --umask, octal; None: 0022
    bundle: str | None = None  # --bundle DIR: an OCI bundle instead of image (sandbox/oci/)


@dataclasses.dataclass(frozen=True)
class Process:
    """The command and how it runs: arguments, environment, directory, user, terminal."""

    args: tuple[str, ...]
    env: tuple[str, ...]
    cwd: str
    user: str  # "UID[:GID]" or "NAME[:GROUP]", resolved inside the container's root
    terminal: bool
    interactive: bool
    umask: int = 0o022  # podman's default; records written before --umask existed load as it


@dataclasses.dataclass(frozen=True)
class Root:
    """Where the container's root filesystem comes from.

    kind "overlay": lowers (image layers, lowest first) + upper/work, mounted at path.
    kind "vfs": a private copy of the layers at path, made once.
    kind "dir": an existing directory used as it is (--rootfs).
    kind "host": a tmpfs at path with the host's /usr, /etc, /lib* bound read-only (the
    `host` image, runtime/hostroot.py).
    kind "fuse-overlay": lowers + upper/work merged by fuse-overlayfs at path (no kernel
    overlay in a user namespace; rootless/fuse_overlay.py).
    shifted: with a mapping that is not the store's (keep-id), fuse-overlayfs shows the lowers
    at this path with the image's owners (uid_shift/gid_shift: (id in the container's
    namespace, id shown, count)), and "overlay" and "vfs" use it as their only lower.
    """

    kind: str
    path: Path
    lowers: tuple[Path, ...] = ()
    upper: Path | None = None
    work: Path | None = None
    readonly: bool = False
    shifted: Path | None = None
    uid_shift: tuple[tuple[int, int, int], ...] = ()
    gid_shift: tuple[tuple[int, int, int], ...] = ()

    @property
    def needs_fuse(self) -> bool:
        """A fuse-overlayfs daemon serves part of this root (the intermediate starts it)."""
        return self.shifted is not None or self.kind == "fuse-overlay"


@dataclasses.dataclass(frozen=True)
class ContainerSpec:
    """Everything a container needs, validated before any process exists (build())."""

    id: str
    name: str
    hostname: str
    process: Process
    root: Root
    mounts: tuple[Mount, ...]
    # Files sandbox writes for the container, bind-mounted over /etc/<name>.
    etc_files: tuple[tuple[str, Path], ...]
    mapping: IdMapping
    init: bool
    image: str  # the image reference the user gave, or the --rootfs path
    image_id: str | None
    restart: str = "no"
    stop_signal: str = "SIGTERM"  # the image's StopSignal, sent first by `sandbox stop`
    network: NetworkConfig = NO_NETWORK
    # The namespaces the container gets besides its user namespace (init.py maps the names to
    # CLONE_* flags); --network host leaves out "net".
    namespaces: tuple[str, ...] = NAMESPACES
    resources: Resources = NO_LIMITS
    # Capabilities, seccomp (with its compiled filter), no_new_privs, masked paths, rlimits.
    security: Security = DEFAULT_SECURITY
    # From an OCI config.json (sandbox/oci/spec.py): sysctls PID 1 writes (before /proc/sys is
    # made read-only), namespaces joined by path instead of created (OCI type name, path),
    # the process's oom_score_adj and supplementary groups beyond /etc/group's.
    sysctl: tuple[tuple[str, str], ...] = ()
    namespace_paths: tuple[tuple[str, str], ...] = ()
    oom_score_adj: int | None = None
    additional_gids: tuple[int, ...] = ()
    # sandbox-runtime: PID 1 waits for `start` by opening this FIFO for writing (runc's
    # exec.fifo) instead of the parent's "start" message, and lives on without PDEATHSIG.
    start_fifo: str | None = None
    # sandbox-runtime create --preserve-fds N: fds 3..3+N-1 pass on to the command.
    preserve_fds: int = 0


def _adds_net_admin(cap_add: Sequence[str]) -> bool:
    names = {c.upper().removeprefix("CAP_") for c in cap_add}
    return bool(names & {"NET_ADMIN", "ALL"})


def parse_env_file(path: str) -> list[str]:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise UsageError(f"cannot read env file {path}", context=e.strerror) from e
    entries = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        entries.append(_env_entry(line, f"{path}:{number}"))
    return [e for e in entries if e]


def _env_entry(item: str, where: str) -> str:
    key, has_value, value = item.partition("=")
    if not _ENV_KEY_RE.match(key):
        raise UsageError(
            f"invalid environment variable {item!r} ({where})",
            hint="use KEY=VALUE, or KEY to copy it from your environment",
        )
    if has_value:
        return f"{key}={value}"
    host = os.environ.get(key)
    return f"{key}={host}" if host is not None else ""


def merge_env(*layers: Sequence[str]) -> tuple[str, ...]:
    """KEY=VALUE lists merged in order, later keys replacing earlier ones in place."""
    merged: dict[str, str] = {}
    for layer in layers:
        for entry in layer:
            key, _, value = entry.partition("=")
            merged[key] = value
    return tuple(f"{k}={v}" for k, v in merged.items())


def parse_volume(text: str, volumes_root: Path | None = None) -> Mount:
    """-v HOST:CONTAINER[:OPTIONS] -> a bind Mount (HOST must exist, as podman requires).

    -v NAME:CONTAINER names a volume (sandbox/volumes.py) under volumes_root; its directory
    is created by runtime/container.py once the whole spec is valid.
    """
    parts = text.split(":")
    if len(parts) < 2 or len(parts) > 3 or not parts[0] or not parts[1]:
        raise UsageError(f"invalid volume {text!r}", hint="use -v HOSTPATH:CONTAINERPATH[:ro]")
    host, target = parts[0], parts[1]
    opts = parts[2].split(",") if len(parts) == 3 and parts[2] else []
    from sandbox import volumes

    named = volumes.is_name(host)
    if named and volumes_root is None:
        raise UsageError(
            f"invalid volume {text!r}: named volumes are not available here",
            hint="give an absolute host path, e.g. -v $PWD/data:/data",
        )
    if not named and not host.startswith("/") and not host.startswith("."):
        raise UsageError(
            f"invalid volume {text!r}", hint="give an absolute host path or a volume NAME"
        )
    if not target.startswith("/"):
        raise UsageError(f"invalid volume {text!r}: the container path must be absolute")
    if named:
        assert volumes_root is not None
        source = str(volumes_root / volumes.validate_name(host) / volumes.DATA)
    else:
        source = os.path.abspath(host)
    if not named and not os.path.exists(source):
        raise UsageError(
            f"volume source {source} does not exist",
            hint="create it first (mkdir -p), or fix the path",
        )
    options = ["rbind"]
    for opt in opts:
        if opt in ("ro", "rw"):
            options.append(opt)
        elif opt in ("z", "Z", "rprivate", "private"):
            continue
        else:
            raise UsageError(
                f"invalid volume option {opt!r} in {text!r}", hint="supported: ro, rw, z, Z"
            )
    return Mount(os.path.normpath(target), "bind", source, tuple(options))


def parse_tmpfs(text: str) -> Mount:
    target, _, opts = text.partition(":")
    if not target.startswith("/"):
        raise UsageError(f"invalid --tmpfs {text!r}: the container path must be absolute")
    options = ["rw", "noexec", "nosuid", "nodev"]
    if opts:
        options += opts.split(",")
    return Mount(os.path.normpath(target), "tmpfs", "tmpfs", tuple(options))


def command_line(image_config: Mapping[str, Any], options: RunOptions) -> tuple[str, ...]:
    """podman's rule: entrypoint + (the user's command, or the image's Cmd)."""
    if options.entrypoint is not None:
        entrypoint = _parse_entrypoint(options.entrypoint)
        cmd = list(options.command)
    else:
        entrypoint = list(image_config.get("Entrypoint") or [])
        cmd = list(options.command) or list(image_config.get("Cmd") or [])
    args = tuple(entrypoint + cmd)
    if not args:
        raise UsageError(
            f"no command given and image {options.image} has none",
            hint=f"sandbox run {options.image} COMMAND",
        )
    return args


def _parse_entrypoint(text: str) -> list[str]:
    if text.startswith("["):
        import json

        try:
            value = json.loads(text)
        except ValueError as e:
            raise UsageError(f"invalid --entrypoint {text!r}", context=str(e)) from e
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UsageError("--entrypoint as JSON must be a list of strings")
        return value
    return [text] if text else []


def parse_umask(text: str | None) -> int:
    """--umask: an octal mask of at most four digits (0022, 077), as podman takes it."""
    if text is None:
        return 0o022
    if not 1 <= len(text) <= 4 or any(c not in "01234567" for c in text):
        raise UsageError(f"invalid --umask {text!r}", hint="give an octal mask such as 0022 or 077")
    value = int(text, 8)
    if value > 0o777:
        raise UsageError(f"invalid --umask {text!r}", hint="the mask is at most 0777")
    return value


def parse_restart(policy: str) -> tuple[str, int]:
    """no | always | unless-stopped | on-failure[:N] -> (kind, max retries; 0 = unlimited)."""
    kind, _, count = policy.partition(":")
    if kind not in ("no", "always", "on-failure", "unless-stopped"):
        raise UsageError(
            f"invalid restart policy {policy!r}",
            hint="use no, always, unless-stopped or on-failure[:N]",
        )
    if count and (kind != "on-failure" or not count.isdigit()):
        raise UsageError(
            f"invalid restart policy {policy!r}",
            hint="only on-failure takes a count, as in on-failure:3",
        )
    return kind, int(count or 0)


def validate_name(name: str) -> str:
    if not _NAME_RE.match(name) or len(name) > 128:
        raise UsageError(
            f"invalid container name {name!r}",
            hint="names start with a letter or digit and contain only "
            "letters, digits, '_', '.' and '-'",
        )
    return name


def build(
    options: RunOptions,
    *,
    container_id: str,
    name: str,
    image_config: Mapping[str, Any],
    image_id: str | None,
    root: Root,
    mapping: IdMapping,
    etc_dir: Path,
    cgroup_mount: bool = False,
    volumes_root: Path | None = None,
) -> ContainerSpec:
    """Validate options against each other and the image; no side effects.

    cgroup_mount: the container has a cgroup of its own; mount it (cgroup2, read-only) on
    /sys/fs/cgroup, where it shows only the container's subtree.
    """
    if options.hostname is not None and not _HOSTNAME_RE.match(options.hostname):
        raise UsageError(
            f"invalid hostname {options.hostname!r}", hint="up to 63 letters, digits, '-' and '.'"
        )
    hostname = options.hostname or container_id[:12]
    parse_restart(options.restart)
    keep_id = None
    if options.userns == "keep-id":
        from sandbox.runtime.keepid import host_identity

        keep_id = host_identity()
    workdir = (
        options.workdir or image_config.get("WorkingDir") or (keep_id.home if keep_id else "/")
    )
    if not str(workdir).startswith("/"):
        raise UsageError(f"invalid working directory {workdir!r}: it must be absolute")
    env_from_files: list[str] = []
    for path in options.env_files:
        env_from_files += parse_env_file(path)
    cli_env = [e for e in (_env_entry(item, "-e") for item in options.env) if e]
    env = merge_env(
        [f"PATH={DEFAULT_PATH}"],
        list(image_config.get("Env") or []),
        [f"HOSTNAME={hostname}", "container=sandbox"] + (["TERM=xterm"] if options.tty else []),
        env_from_files,
        cli_env,
    )
    user = options.user or image_config.get("User") or "0"
    if keep_id is not None and options.user is None:
        user = f"{keep_id.uid}:{keep_id.gid}"  # keep-id: the user, not the image's User
    mounts = list(default_mounts())
    if cgroup_mount:
        mounts.append(Mount("/sys/fs/cgroup", "cgroup2", "cgroup2", _CGROUP_OPTIONS))
    if options.read_only:
        # podman's --read-only-tmpfs default: scratch space where programs expect it.
        mounts += [parse_tmpfs(p) for p in ("/tmp", "/var/tmp", "/run")]
    mounts += [parse_volume(v, volumes_root) for v in options.volumes]
    mounts += [parse_tmpfs(t) for t in options.tmpfs]
    seen: set[str] = set()
    for m in mounts[len(default_mounts()) + cgroup_mount :]:
        if m.destination in seen:
            raise UsageError(
                f"two mounts on {m.destination}", hint="give each -v/--tmpfs its own container path"
            )
        seen.add(m.destination)
    etc_names = ("hostname", "hosts", "resolv.conf") + (("passwd", "group") if keep_id else ())
    etc_files = tuple((f"/etc/{n}", etc_dir / n) for n in etc_names)
    net = build_network(
        options.network,
        options.publish,
        options.dns,
        options.dns_search,
        options.add_host,
        options.egress_allow,
    )
    if net.egress and (options.privileged or _adds_net_admin(options.cap_add)):
        raise UsageError(
            "--egress-allow cannot hold with --privileged or --cap-add NET_ADMIN",
            hint="the container could delete the rules; drop one of the two options",
        )
    return ContainerSpec(
        id=container_id,
        name=name,
        hostname=hostname,
        process=Process(
            args=command_line(image_config, options),
            env=env,
            cwd=str(workdir),
            user=str(user),
            terminal=options.tty,
            interactive=options.interactive,
            umask=parse_umask(options.umask),
        ),
        root=dataclasses.replace(root, readonly=options.read_only),
        mounts=tuple(mounts),
        etc_files=etc_files,
        mapping=mapping,
        init=options.init,
        image=options.image,
        image_id=image_id,
        restart=options.restart,
        stop_signal=str(image_config.get("StopSignal") or "SIGTERM"),
        network=net,
        namespaces=NAMESPACES if net.own_namespace else tuple(n for n in NAMESPACES if n != "net"),
        resources=options.resources,
        # Last: compiling the seccomp filter is the most expensive check.
        security=build_security(
            cap_add=options.cap_add,
            cap_drop=options.cap_drop,
            privileged=options.privileged,
            security_opts=options.security_opt,
            ulimits=options.ulimits,
        ),
    )
