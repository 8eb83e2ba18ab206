"""ContainerSpec <-> OCI runtime-spec 1.x config.json.

to_config() writes everything a ContainerSpec says in the spec's own fields; what the OCI spec
has no field for (the container's name, image, restart policy, network, how the root is
assembled) rides in one annotation, ANNOTATION, so a config.json written by sandbox reads back
into the same ContainerSpec. from_config() reads any runtime-spec 1.x config.json: every field a
rootless runtime can honour becomes part of the spec; anything else is refused with a
UsageError naming the field (linux.devices with real devices, an unknown namespace type,
ambient capabilities, ...). Nothing here forks or mounts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sandbox import codec
from sandbox.errors import UsageError
from sandbox.rootless import caps, rlimits
from sandbox.rootless.cgroups.resources import CPU_PERIOD, NO_LIMITS, Resources
from sandbox.rootless.idmap import IdMapping, IdRange
from sandbox.rootless.mounts import DEVICES, Mount
from sandbox.runtime.network import NO_NETWORK, NetworkConfig
from sandbox.security import Security
from sandbox.spec import ContainerSpec, Process, Root

OCI_VERSION = "1.0.2"
ANNOTATION = "io.sandbox.spec"
# OCI namespace types <-> the names spec.namespaces uses ("user" is always created apart).
NAMESPACE_TYPES = {
    "pid": "pid",
    "network": "net",
    "mount": "mount",
    "ipc": "ipc",
    "uts": "uts",
    "cgroup": "cgroup",
}
_TYPE_OF = {v: k for k, v in NAMESPACE_TYPES.items()}
_NUMERIC_USER = re.compile(r"^(\d+)(?::(\d+))?$")
HOOK_NAMES = (
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
)
_RLIMIT_TYPES = {"RLIMIT_" + name.upper(): name for name in rlimits.NAMES}
# Fields of the spec this module reads (or knows it may ignore); anything else is refused.
_KNOWN = {
    "": {"ociVersion", "process", "root", "hostname", "mounts", "linux", "hooks", "annotations"},
    "process": {
        "terminal",
        "consoleSize",
        "user",
        "args",
        "env",
        "cwd",
        "capabilities",
        "rlimits",
        "noNewPrivileges",
        "oomScoreAdj",
        # No SELinux or AppArmor here: accepted only when empty (checked below).
        "apparmorProfile",
        "selinuxLabel",
    },
    "linux": {
        "namespaces",
        "uidMappings",
        "gidMappings",
        "resources",
        "cgroupsPath",
        "seccomp",
        "maskedPaths",
        "readonlyPaths",
        "sysctl",
        "devices",
        "mountLabel",
        "rootfsPropagation",
    },
}


def _refuse(field: str, why: str, hint: str | None = None) -> UsageError:
    return UsageError(f"config.json: {field}: {why}", hint=hint)


# --- ContainerSpec -> config.json -----------------------------------------------------------


def to_config(spec: ContainerSpec) -> dict[str, Any]:
    """The runtime-spec 1.x config.json that describes spec."""
    sec = spec.security
    cap_names = ["CAP_" + c for c in sec.capabilities]
    uid, gid = _numeric_user(spec)
    process: dict[str, Any] = {
        "terminal": spec.process.terminal,
        "user": {"uid": uid, "gid": gid, "umask": spec.process.umask},
        "args": list(spec.process.args),
        "env": list(spec.process.env),
        "cwd": spec.process.cwd,
        "capabilities": {
            "bounding": cap_names,
            "effective": cap_names,
            "permitted": cap_names,
            "inheritable": [],
            "ambient": [],
        },
        "rlimits": [
            {"type": "RLIMIT_" + r.name.upper(), "hard": r.hard, "soft": r.soft}
            for r in sec.rlimits
        ],
        "noNewPrivileges": sec.no_new_privileges,
    }
    if spec.additional_gids:
        process["user"]["additionalGids"] = list(spec.additional_gids)
    if spec.oom_score_adj is not None:
        process["oomScoreAdj"] = spec.oom_score_adj
    namespaces: list[dict[str, str]] = [{"type": "user"}]
    namespaces += [{"type": _TYPE_OF[n]} for n in spec.namespaces]
    namespaces += [{"type": _TYPE_OF[n], "path": p} for n, p in spec.namespace_paths]
    linux: dict[str, Any] = {
        "namespaces": namespaces,
        "uidMappings": [_id_range(r) for r in spec.mapping.uids],
        "gidMappings": [_id_range(r) for r in spec.mapping.gids],
        "resources": resources_to_config(spec.resources),
        "maskedPaths": list(sec.masked_paths),
        "readonlyPaths": list(sec.readonly_paths),
    }
    if spec.sysctl:
        linux["sysctl"] = dict(spec.sysctl)
    seccomp = seccomp_to_config(sec)
    if seccomp is not None:
        linux["seccomp"] = seccomp
    mounts = [_mount(m) for m in spec.mounts]
    mounts += [
        {"destination": d, "type": "bind", "source": str(s), "options": ["bind"]}
        for d, s in spec.etc_files
    ]
    extra = {
        "id": spec.id,
        "name": spec.name,
        "image": spec.image,
        "image_id": spec.image_id,
        "init": spec.init,
        "restart": spec.restart,
        "stop_signal": spec.stop_signal,
        "user": spec.process.user,
        "interactive": spec.process.interactive,
        "root": codec.to_json(spec.root),
        "network": codec.to_json(spec.network),
        "single_reason": spec.mapping.single_reason,
        "seccomp": sec.seccomp,
        "privileged": sec.privileged,
        "etc_files": [d for d, _ in spec.etc_files],
        "start_fifo": spec.start_fifo,
    }
    return {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": str(spec.root.path), "readonly": spec.root.readonly},
        "hostname": spec.hostname,
        "mounts": mounts,
        "annotations": {
            ANNOTATION: json.dumps(extra, sort_keys=True),
            "org.opencontainers.image.stopSignal": spec.stop_signal,
        },
        "linux": linux,
    }


def _id_range(r: IdRange) -> dict[str, int]:
    return {"containerID": r.inside, "hostID": r.outside, "size": r.size}


def _mount(m: Mount) -> dict[str, Any]:
    return {
        "destination": m.destination,
        "type": m.type,
        "source": m.source,
        "options": list(m.options),
    }


def _numeric_user(spec: ContainerSpec) -> tuple[int, int]:
    """process.user as numbers: "UID[:GID]" directly, a name through the root's /etc/passwd."""
    match = _NUMERIC_USER.match(spec.process.user)
    if match:
        return int(match[1]), int(match[2] or 0)
    from sandbox.runtime import users

    for base in (spec.root.upper, *reversed(spec.root.lowers), spec.root.path):
        if base is None:
            continue
        try:
            passwd = (base / "etc/passwd").read_text()
            group = (base / "etc/group").read_text() if (base / "etc/group").exists() else ""
        except OSError:
            continue
        try:
            user = users.resolve(spec.process.user, passwd, group)
        except Exception:  # the annotation keeps the name; the numbers are a courtesy
            return 0, 0
        return user.uid, user.gid
    return 0, 0


def resources_to_config(resources: Resources) -> dict[str, Any]:
    out: dict[str, Any] = {}
    memory: dict[str, int] = {}
    if resources.memory is not None:
        memory["limit"] = resources.memory
    if resources.memory_swap is not None:
        memory["swap"] = resources.memory_swap
    if resources.memory_reservation is not None:
        memory["reservation"] = resources.memory_reservation
    if memory:
        out["memory"] = memory
    cpu: dict[str, Any] = {}
    if resources.cpu_quota is not None:
        cpu["quota"] = resources.cpu_quota
        cpu["period"] = CPU_PERIOD
    if resources.cpuset_cpus is not None:
        cpu["cpus"] = resources.cpuset_cpus
    if cpu:
        out["cpu"] = cpu
    if resources.pids_limit is not None:
        out["pids"] = {"limit": resources.pids_limit}
    # cgroup v2 weights have no v1 field of the same scale: the spec's unified map carries them.
    unified = {}
    if resources.cpu_weight is not None:
        unified["cpu.weight"] = str(resources.cpu_weight)
    if resources.io_weight is not None:
        unified["io.weight"] = str(resources.io_weight)
    if unified:
        out["unified"] = unified
    return out


def seccomp_to_config(security: Security) -> dict[str, Any] | None:
    """The container's seccomp profile in the spec's shape, resolved for its capabilities and
    this machine (includes/excludes applied, archMap reduced to an architectures list)."""
    if security.seccomp == "unconfined":
        return None
    from sandbox.rootless import seccomp

    profile = (
        seccomp.default_profile()
        if security.seccomp == "default"
        else seccomp.load_profile(security.seccomp)
    )
    return seccomp_for(profile, security.capabilities)


def seccomp_for(profile: Mapping[str, Any], capabilities: Sequence[str]) -> dict[str, Any]:
    import platform

    from sandbox.rootless import seccomp

    machine = platform.machine()
    kernel = seccomp._kernel_version()
    held = {c.upper().removeprefix("CAP_") for c in capabilities}
    syscalls = []
    for rule in profile.get("syscalls") or []:
        if not seccomp._applies(rule, held, kernel, machine):
            continue
        names = list(rule.get("names") or ([rule["name"]] if rule.get("name") else []))
        entry: dict[str, Any] = {"names": names, "action": rule.get("action")}
        if rule.get("errnoRet") is not None:
            entry["errnoRet"] = rule["errnoRet"]
        if rule.get("args"):
            entry["args"] = list(rule["args"])
        syscalls.append(entry)
    out: dict[str, Any] = {
        "defaultAction": profile.get("defaultAction"),
        "architectures": seccomp.architectures(profile, machine),
        "syscalls": syscalls,
    }
    if profile.get("defaultErrnoRet") is not None:
        out["defaultErrnoRet"] = profile["defaultErrnoRet"]
    if profile.get("flags"):
        out["flags"] = list(profile["flags"])
    return out


# --- config.json -> ContainerSpec -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Context:
    """What from_config needs besides the file: where it came from and the host's choices."""

    bundle: Path  # root.path and relative bind sources are relative to it
    container_id: str
    mapping: IdMapping  # used when the config has no uidMappings (no user namespace of its own)
    seccomp_dir: Path | None = None  # where a foreign seccomp profile is kept (for to_config)


def load(bundle: Path) -> dict[str, Any]:
    path = bundle / "config.json"
    return codec.read_object(
        path,
        what=str(path),
        limit=16 << 20,
        error=UsageError,
        hint="an OCI bundle is a directory with config.json and its rootfs",
    )


def wants_user_namespace(config: Mapping[str, Any]) -> bool:
    linux = config.get("linux") or {}
    return any(ns.get("type") == "user" for ns in linux.get("namespaces") or [])


def from_config(config: Mapping[str, Any], ctx: Context) -> ContainerSpec:
    """A ContainerSpec for config, or a UsageError naming the first field we cannot honour."""
    _check_known(config, "", _KNOWN[""])
    version = config.get("ociVersion")
    if not isinstance(version, str) or not version.startswith("1."):
        raise _refuse("ociVersion", f"{version!r} is not a runtime-spec 1.x version")
    annotations = _dict(config.get("annotations"), "annotations")
    extra = _extra(annotations)
    process = _dict(config.get("process"), "process")
    _check_known(process, "process", _KNOWN["process"])
    linux = _dict(config.get("linux"), "linux")
    _check_known(linux, "linux", _KNOWN["linux"])
    for field in ("apparmorProfile", "selinuxLabel"):
        if process.get(field):
            raise _refuse(f"process.{field}", "no LSM profile or label can be applied here")
    for field in ("mountLabel",):
        if linux.get(field):
            raise _refuse(f"linux.{field}", "no SELinux label can be applied here")
    if linux.get("rootfsPropagation") not in (None, "", "private", "rprivate", "slave", "rslave"):
        raise _refuse("linux.rootfsPropagation", "only private or slave propagation is supported")
    args = process.get("args")
    if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
        raise _refuse("process.args", "must be a non-empty list of strings")
    cwd = process.get("cwd", "/")
    if not isinstance(cwd, str) or not cwd.startswith("/"):
        raise _refuse("process.cwd", f"{cwd!r} is not an absolute path")
    env = process.get("env") or []
    if not isinstance(env, list) or not all(isinstance(e, str) for e in env):
        raise _refuse("process.env", "must be a list of KEY=VALUE strings")
    user = _dict(process.get("user"), "process.user")
    uid, gid = (
        _int(user.get("uid", 0), "process.user.uid"),
        _int(user.get("gid", 0), "process.user.gid"),
    )
    additional = tuple(
        _int(g, "process.user.additionalGids") for g in user.get("additionalGids") or []
    )
    if user.get("username"):
        raise _refuse("process.user.username", "is for Windows containers")
    umask = _int(user.get("umask", 0o022), "process.user.umask")
    if not 0 <= umask <= 0o777:
        raise _refuse("process.user.umask", f"{umask} is not a mode mask (0 to 0o777)")
    root_cfg = _dict(config.get("root"), "root")
    root_path = root_cfg.get("path")
    if not isinstance(root_path, str) or not root_path:
        raise _refuse("root.path", "is missing")
    resolved_root = Path(os.path.normpath(ctx.bundle / root_path))
    has_root = bool(extra.get("root"))
    root = codec.from_json(Root, extra["root"]) if has_root else Root("dir", resolved_root)
    root = dataclasses.replace(root, readonly=bool(root_cfg.get("readonly", False)))
    hostname = config.get("hostname") or ""
    if not isinstance(hostname, str):
        raise _refuse("hostname", "must be a string")
    created, joined = _namespaces(linux)
    if hostname and "uts" not in created and "uts" not in dict(joined):
        raise _refuse("hostname", "needs a uts namespace of the container's own")
    mapping = _mapping(linux, ctx, extra)
    etc_targets = set(extra.get("etc_files") or ())
    mounts: list[Mount] = []
    etc_files: list[tuple[str, Path]] = []
    for number, raw in enumerate(config.get("mounts") or []):
        mount = _mount_from(raw, f"mounts[{number}]", ctx.bundle)
        if mount.destination in etc_targets and mount.type == "bind":
            etc_files.append((mount.destination, Path(mount.source)))
        else:
            mounts.append(mount)
    _devices(linux.get("devices"))
    security = _security(process, linux, extra, ctx)
    sysctl = _dict(linux.get("sysctl"), "linux.sysctl")
    for key, value in sysctl.items():
        if not isinstance(value, str):
            raise _refuse(f"linux.sysctl.{key}", "values are strings")
    oom = process.get("oomScoreAdj")
    return ContainerSpec(
        id=str(extra.get("id") or ctx.container_id),
        name=str(extra.get("name") or ctx.container_id),
        hostname=hostname,
        process=Process(
            args=tuple(args),
            env=tuple(env),
            cwd=cwd,
            user=str(extra.get("user") or f"{uid}:{gid}"),
            terminal=bool(process.get("terminal", False)),
            interactive=bool(extra.get("interactive", False)),
            umask=umask,
        ),
        root=root,
        mounts=tuple(mounts),
        etc_files=tuple(etc_files),
        mapping=mapping,
        init=bool(extra.get("init", False)),
        image=str(extra.get("image") or ctx.bundle),
        image_id=extra.get("image_id"),
        restart=str(extra.get("restart") or "no"),
        stop_signal=str(
            extra.get("stop_signal")
            or annotations.get("org.opencontainers.image.stopSignal")
            or "SIGTERM"
        ),
        network=(
            codec.from_json(NetworkConfig, extra["network"]) if extra.get("network") else NO_NETWORK
        ),
        namespaces=tuple(created),
        resources=resources_from_config(_dict(linux.get("resources"), "linux.resources")),
        security=security,
        sysctl=tuple(sysctl.items()),
        namespace_paths=tuple(joined),
        oom_score_adj=None if oom is None else _int(oom, "process.oomScoreAdj"),
        additional_gids=additional,
        start_fifo=extra.get("start_fifo"),
    )


def _check_known(section: Mapping[str, Any], where: str, known: set[str]) -> None:
    for key, value in section.items():
        if key not in known and value not in (None, "", [], {}):
            field = f"{where}.{key}" if where else key
            raise _refuse(field, "is not supported by this runtime")


def _dict(value: Any, field: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _refuse(field, "must be an object")
    return value


def _int(value: Any, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _refuse(field, f"{value!r} is not an integer")
    return value


def _extra(annotations: Mapping[str, Any]) -> dict[str, Any]:
    raw = annotations.get(ANNOTATION)
    if raw is None:
        return {}
    try:
        extra = json.loads(raw)
    except (TypeError, ValueError) as e:
        raise _refuse(f"annotations.{ANNOTATION}", "is not valid JSON") from e
    return extra if isinstance(extra, dict) else {}


def _namespaces(linux: Mapping[str, Any]) -> tuple[list[str], list[tuple[str, str]]]:
    created: list[str] = []
    joined: list[tuple[str, str]] = []
    seen: set[str] = set()
    for number, ns in enumerate(linux.get("namespaces") or []):
        field = f"linux.namespaces[{number}]"
        if not isinstance(ns, dict):
            raise _refuse(field, "must be an object")
        kind = ns.get("type")
        if kind in seen:
            raise _refuse(field, f"the {kind} namespace is listed twice")
        seen.add(str(kind))
        path = ns.get("path") or None
        if kind == "user":
            if path:
                raise _refuse(
                    f"{field}.path",
                    "joining a user namespace is not supported",
                    hint="leave out the path: the runtime creates the user namespace",
                )
            continue
        if kind == "time":
            if path:
                raise _refuse(f"{field}.path", "joining a time namespace is not supported")
            continue  # the container always gets one when the kernel has them
        if kind not in NAMESPACE_TYPES:
            raise _refuse(
                f"{field}.type",
                f"unknown namespace type {kind!r}",
                hint="use " + ", ".join([*NAMESPACE_TYPES, "user", "time"]),
            )
        if path:
            joined.append((NAMESPACE_TYPES[kind], str(path)))
        else:
            created.append(NAMESPACE_TYPES[kind])
    from sandbox.spec import NAMESPACES

    return sorted(created, key=NAMESPACES.index), joined


def _mapping(linux: Mapping[str, Any], ctx: Context, extra: Mapping[str, Any]) -> IdMapping:
    def ranges(field: str) -> tuple[IdRange, ...]:
        out = []
        for number, r in enumerate(linux.get(field) or []):
            where = f"linux.{field}[{number}]"
            if not isinstance(r, dict):
                raise _refuse(where, "must be an object")
            out.append(
                IdRange(
                    _int(r.get("containerID"), f"{where}.containerID"),
                    _int(r.get("hostID"), f"{where}.hostID"),
                    _int(r.get("size"), f"{where}.size"),
                )
            )
        return tuple(out)

    uids, gids = ranges("uidMappings"), ranges("gidMappings")
    if not uids and not gids:
        return ctx.mapping
    if not uids or not gids:
        raise _refuse("linux.uidMappings", "uidMappings and gidMappings go together")
    if (uids, gids) == (ctx.mapping.uids, ctx.mapping.gids):
        return ctx.mapping  # the caller checked it (sandbox/oci/bundle.py): keep how to write it
    return IdMapping(uids, gids, single_reason=extra.get("single_reason"))


def _mount_from(raw: Any, field: str, bundle: Path) -> Mount:
    if not isinstance(raw, dict):
        raise _refuse(field, "must be an object")
    destination = raw.get("destination")
    if not isinstance(destination, str) or not destination.startswith("/"):
        raise _refuse(f"{field}.destination", f"{destination!r} is not an absolute path")
    options = raw.get("options") or []
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise _refuse(f"{field}.options", "must be a list of strings")
    kind = raw.get("type") or ("bind" if {"bind", "rbind"} & set(options) else "")
    source = str(raw.get("source") or "")
    if raw.get("uidMappings") or raw.get("gidMappings"):
        raise _refuse(f"{field}.uidMappings", "id-mapped mounts are not supported")
    if kind == "cgroup":
        # cgroup v1 hierarchies cannot be mounted in a user namespace: runc binds the host's.
        return Mount(
            destination, "bind", "/sys/fs/cgroup", ("rbind", "ro", "nosuid", "noexec", "nodev")
        )
    if not kind:
        raise _refuse(f"{field}.type", "is missing (and the options say no bind)")
    if kind == "bind" and not source.startswith("/"):
        source = str(bundle / source)
    return Mount(os.path.normpath(destination), kind, source, tuple(options))


def _devices(devices: Any) -> None:
    """The devices every container gets anyway are fine; others would need mknod."""
    for number, device in enumerate(devices or []):
        path = device.get("path") if isinstance(device, dict) else None
        if not isinstance(path, str) or path.removeprefix("/dev/") not in DEVICES:
            raise _refuse(
                f"linux.devices[{number}]",
                f"cannot create device {path!r} rootless",
                hint="bind-mount the host's device node with a mounts entry instead",
            )


def _security(
    process: Mapping[str, Any], linux: Mapping[str, Any], extra: Mapping[str, Any], ctx: Context
) -> Security:
    capabilities = _dict(process.get("capabilities"), "process.capabilities")
    for kind in ("ambient", "inheritable"):
        if capabilities.get(kind):
            raise _refuse(
                f"process.capabilities.{kind}",
                "must be empty",
                hint="inheritable and ambient capabilities let non-root processes "
                "keep capabilities across exec; sandbox never grants them",
            )
    names: set[str] = set()
    for kind in ("bounding", "effective", "permitted"):
        for name in capabilities.get(kind) or []:
            short = str(name).upper().removeprefix("CAP_")
            if short not in caps.NUMBERS:
                raise _refuse(f"process.capabilities.{kind}", f"unknown capability {name!r}")
            names.add(short)
    held = tuple(sorted(names, key=caps.NUMBERS.__getitem__))
    limits = []
    for number, r in enumerate(process.get("rlimits") or []):
        where = f"process.rlimits[{number}]"
        rtype = str(r.get("type")) if isinstance(r, dict) else ""
        if rtype not in _RLIMIT_TYPES:
            raise _refuse(f"{where}.type", f"unknown rlimit {rtype!r}")
        limits.append(
            rlimits.Rlimit(
                _RLIMIT_TYPES[rtype],
                _int(r.get("soft"), f"{where}.soft"),
                _int(r.get("hard"), f"{where}.hard"),
            )
        )
    masked = tuple(str(p) for p in linux.get("maskedPaths") or [])
    readonly = tuple(str(p) for p in linux.get("readonlyPaths") or [])
    for field, paths in (("maskedPaths", masked), ("readonlyPaths", readonly)):
        if not all(p.startswith("/") for p in paths):
            raise _refuse(f"linux.{field}", "every entry must be an absolute path")
    profile = linux.get("seccomp")
    name = str(extra.get("seccomp") or ("unconfined" if not profile else "config.json"))
    program = None
    flags = 0
    if profile:
        from sandbox.errors import SandboxError
        from sandbox.rootless import seccomp

        if not isinstance(profile, dict):
            raise _refuse("linux.seccomp", "must be an object")
        if profile.get("listenerPath"):
            raise _refuse("linux.seccomp.listenerPath", "no seccomp agent runs here")
        try:
            program = seccomp.compile(profile, capabilities=held)
            flags = seccomp.flags(profile)
        except SandboxError as e:
            raise _refuse("linux.seccomp", e.message, hint=e.hint) from e
        if not extra.get("seccomp") and ctx.seccomp_dir is not None:
            # Kept beside the container, so its config.json can be written out again.
            ctx.seccomp_dir.mkdir(parents=True, exist_ok=True)
            kept = ctx.seccomp_dir / "seccomp.json"
            kept.write_text(json.dumps(profile))
            name = str(kept)
    return Security(
        capabilities=held,
        privileged=bool(extra.get("privileged", False)),
        no_new_privileges=bool(process.get("noNewPrivileges", False)),
        seccomp=name if profile or name == "unconfined" else "unconfined",
        masked_paths=masked,
        readonly_paths=readonly,
        rlimits=tuple(limits),
        seccomp_filter=program,
        seccomp_flags=flags,
    )


def resources_from_config(res: Mapping[str, Any]) -> Resources:
    """linux.resources -> Resources; fields no cgroup v2 file takes are refused by name."""
    allowed = {"memory", "cpu", "pids", "unified", "blockIO", "devices"}
    for key, value in res.items():
        if key not in allowed and value not in (None, {}, []):
            raise _refuse(f"linux.resources.{key}", "is not supported by this runtime")
    memory = _dict(res.get("memory"), "linux.resources.memory")
    for key in memory:
        if key not in ("limit", "swap", "reservation") and memory[key] is not None:
            raise _refuse(f"linux.resources.memory.{key}", "is not supported by this runtime")
    cpu = _dict(res.get("cpu"), "linux.resources.cpu")
    for key in cpu:
        if key not in ("quota", "period", "cpus", "shares") and cpu[key] not in (None, ""):
            raise _refuse(f"linux.resources.cpu.{key}", "is not supported by this runtime")
    quota = cpu.get("quota")
    period = cpu.get("period") or CPU_PERIOD
    cpu_quota = None
    if quota is not None and quota > 0:
        cpu_quota = int(_int(quota, "linux.resources.cpu.quota") * CPU_PERIOD // period)
    unified = _dict(res.get("unified"), "linux.resources.unified")
    for key in unified:
        if key not in ("cpu.weight", "io.weight"):
            raise _refuse(f"linux.resources.unified.{key}", "is not supported by this runtime")
    weight = int(unified["cpu.weight"]) if "cpu.weight" in unified else None
    if weight is None and cpu.get("shares"):
        # crun's conversion from cgroup v1 shares (2..262144) to v2 weight (1..10000).
        weight = 1 + ((_int(cpu["shares"], "linux.resources.cpu.shares") - 2) * 9999) // 262142
    io = int(unified["io.weight"]) if "io.weight" in unified else None
    block = _dict(res.get("blockIO"), "linux.resources.blockIO")
    if io is None and block.get("weight"):
        io = 1 + ((_int(block["weight"], "linux.resources.blockIO.weight") - 10) * 9999) // 990
    pids = _dict(res.get("pids"), "linux.resources.pids")
    # linux.resources.devices (device cgroup rules) are moot: no device node can be created.
    return (
        Resources(
            memory=memory.get("limit"),
            memory_swap=memory.get("swap"),
            memory_reservation=memory.get("reservation"),
            cpu_quota=cpu_quota,
            cpu_weight=weight,
            cpuset_cpus=cpu.get("cpus") or None,
            pids_limit=pids.get("limit"),
            io_weight=io,
        )
        if (memory or cpu or unified or block or pids)
        else NO_LIMITS
    )


# --- `sandbox oci spec` ---------------------------------------------------------------------


def template(*, rootless: bool) -> dict[str, Any]:
    """A config.json to start from, as `runc spec [--rootless]` writes: sh on a terminal, the
    root in ./rootfs read-only, the default mounts, masked and read-only paths."""
    from sandbox import spec as specs
    from sandbox.security import MASKED_PATHS, READONLY_PATHS

    cap_names = ["CAP_" + c for c in ("AUDIT_WRITE", "KILL", "NET_BIND_SERVICE")]
    namespaces = [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount", "cgroup")]
    linux: dict[str, Any] = {
        "namespaces": namespaces,
        "maskedPaths": list(MASKED_PATHS),
        "readonlyPaths": list(READONLY_PATHS),
    }
    if rootless:
        namespaces.append({"type": "user"})
        linux["uidMappings"] = [{"containerID": 0, "hostID": os.getuid(), "size": 1}]
        linux["gidMappings"] = [{"containerID": 0, "hostID": os.getgid(), "size": 1}]
    else:
        linux["resources"] = {"devices": [{"allow": False, "access": "rwm"}]}
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": True,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": [f"PATH={specs.DEFAULT_PATH}", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {k: cap_names for k in ("bounding", "effective", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "sandbox",
        "mounts": [_mount(m) for m in specs.default_mounts()],
        "linux": linux,
    }


# --- containers/<id>/config.json ------------------------------------------------------------

CONFIG = "config.json"


def for_container(store: Any, container_id: str) -> dict[str, Any]:
    """A container's config.json, derived from its stored spec.json when asked for (inspect,
    `oci spec --from`): it is not written at create, which keeps this module off the start
    path."""
    return to_config(store.load_spec(container_id))
