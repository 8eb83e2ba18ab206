"""Kubernetes manifests: a container or a sandbox.yaml job as a Pod or Job, and Pods run locally.

`generate_pod` turns a container's stored ContainerSpec into a v1 Pod, `generate_job` a
sandbox.yaml job into a batch/v1 Job: the same image, command, env, working directory, ports
(hostPort), resources (limits), volumes (hostPath for binds, emptyDir for tmpfs,
persistentVolumeClaim for named volumes), capabilities (add/drop relative to the default set),
seccomp (RuntimeDefault, Localhost with the profile path, or Unconfined) and the user
(runAsUser/runAsGroup/runAsNonRoot). tests/unit/test_kube.py validates what comes out against
the Kubernetes API's JSON schema (kubernetes-validate).

`pod_plan` reads a Pod manifest (hostile input: bounded, every field type-checked, a field
we cannot honour is an error, never silently dropped) into one RunOptions per container,
named POD-CONTAINER; `sandbox kube play` creates them detached and `sandbox kube down` removes
them. A pod's containers share one network namespace, held by the pod's infra container
POD-infra (podman's <podid>-infra; named after the pod so that `kube down`, `inspect` and
`--network container:POD-infra` find it from the manifest alone, with no pod record; a
container of the pod may therefore not be named "infra"). The infra container runs our own
statically linked pause program (sandbox/libexec/pause.c) as the whole of a read-only root
filesystem (`run --rootfs`), nothing from the pod's images; it sits on the named network
POD_NETWORK (created when missing) and carries the whole pod's published ports. The app
containers run with --network container:POD-infra; all of them are spawned under the rootless
netns holder's user namespace (runtime/networks.py), which is what lets the app containers
join the infra's network namespace. So an app container may exit, be stopped and started, or
restart under the pod's restartPolicy, and the others keep their network and the pod its
ports. `kube play` starts the infra first, `kube down` removes it last; with hostNetwork there
is no namespace to hold and no infra container.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sandbox.errors import ConfigError, UsageError
from sandbox.rootless import caps
from sandbox.rootless.cgroups.resources import CPU_PERIOD, Resources
from sandbox.rootless.mounts import Mount
from sandbox.runtime.network import NetworkConfig, PortMapping
from sandbox.security import Security
from sandbox.spec import ContainerSpec, RunOptions

MAX_MANIFEST = 1024 * 1024
# The named network played pods are on (created by `kube play` when missing).
POD_NETWORK = "kube"
# A played pod's infra container is POD-infra (a pod's own container may not be named "infra").
INFRA = "infra"
# Mounts every container gets (spec.default_mounts, the cgroup mount): not the user's.
_BUILTIN = {"/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"}
_ENGINE_ENV = {"HOSTNAME", "container", "TERM"}
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_RESTART = {
    "no": "Never",
    "always": "Always",
    "unless-stopped": "Always",
    "on-failure": "OnFailure",
}
_RESTART_BACK = {"Never": "no", "Always": "always", "OnFailure": "on-failure"}


def dns_name(name: str) -> str:
    """A container name as a Kubernetes object name (RFC 1123 label)."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63].strip("-")
    return label or "sandbox"


# --- generate ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Container:
    """What a manifest's container says, from a spec or from a job's options."""

    name: str
    image: str
    command: tuple[str, ...]
    env: tuple[str, ...]
    workdir: str | None
    user: str
    mounts: tuple[Mount, ...]
    network: NetworkConfig
    resources: Resources
    security: Security
    readonly_root: bool = False


def generate_pod(spec: ContainerSpec, *, volumes_root: Path) -> dict[str, Any]:
    """A v1 Pod running the container spec describes."""
    name = dns_name(spec.name)
    described = _Container(
        name=name,
        image=spec.image,
        command=spec.process.args,
        env=spec.process.env,
        workdir=spec.process.cwd,
        user=spec.process.user,
        mounts=spec.mounts,
        network=spec.network,
        resources=spec.resources,
        security=spec.security,
        readonly_root=spec.root.readonly,
    )
    container, volumes = _container(described, volumes_root)
    pod_spec: dict[str, Any] = {
        "restartPolicy": _RESTART[spec.restart.partition(":")[0]],
        "containers": [container],
    }
    if volumes:
        pod_spec["volumes"] = volumes
    if spec.network.mode == "host":
        pod_spec["hostNetwork"] = True
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": pod_spec,
    }


def generate_job(
    options: RunOptions,
    steps: Sequence[tuple[str, tuple[str, ...], str | None]],
    name: str,
    *,
    volumes_root: Path,
) -> dict[str, Any]:
    """A batch/v1 Job whose one container runs the steps (command, env, workdir) in order
    with `sh`, stopping at the first that fails (as `sandbox job` does)."""
    from sandbox import security, spec
    from sandbox.runtime import network

    lines = ["set -e"]
    for command, env, workdir in steps:
        prefix = f"cd {shlex.quote(workdir)} && " if workdir else ""
        assignments = " ".join(shlex.quote(e) for e in env)
        runner = f"env {assignments} sh -c" if assignments else "sh -c"
        lines.append(f"({prefix}{runner} {shlex.quote(command)})")
    mounts = [spec.parse_volume(v, volumes_root) for v in options.volumes]
    mounts += [spec.parse_tmpfs(t) for t in options.tmpfs]
    described = _Container(
        name=dns_name(name),
        image=options.image,
        command=("sh", "-c", "\n".join(lines)),
        env=spec.merge_env(options.env),
        workdir=options.workdir,
        user=options.user or "",
        mounts=tuple(mounts),
        network=network.build(options.network, options.publish, (), (), (), ()),
        resources=options.resources,
        security=security.build(
            cap_add=options.cap_add,
            cap_drop=options.cap_drop,
            privileged=options.privileged,
            security_opts=options.security_opt,
            ulimits=options.ulimits,
        ),
    )
    container, volumes = _container(described, volumes_root)
    pod_spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    if volumes:
        pod_spec["volumes"] = volumes
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": dns_name(name)},
        "spec": {"backoffLimit": 0, "template": {"spec": pod_spec}},
    }


def _container(c: _Container, volumes_root: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    out: dict[str, Any] = {"name": c.name, "image": c.image, "command": list(c.command)}
    if c.workdir:
        out["workingDir"] = c.workdir
    env = [
        {"name": k, "value": v}
        for k, _, v in (e.partition("=") for e in c.env)
        if k not in _ENGINE_ENV
    ]
    if env:
        out["env"] = env
    ports = [_port(p) for p in c.network.ports]
    if ports:
        out["ports"] = ports
    limits = _limits(c.resources)
    if limits:
        out["resources"] = {"limits": limits}
    mounts, volumes = _volumes(c.mounts, volumes_root)
    if mounts:
        out["volumeMounts"] = mounts
    out["securityContext"] = _security_context(c)
    return out, volumes


def _port(p: PortMapping) -> dict[str, Any]:
    port: dict[str, Any] = {
        "containerPort": p.container_port,
        "hostPort": p.host_port,
        "protocol": p.protocol.upper(),
    }
    if p.host_ip not in ("", "0.0.0.0", "::"):
        port["hostIP"] = p.host_ip
    return port


def _limits(r: Resources) -> dict[str, str]:
    limits: dict[str, str] = {}
    if r.memory is not None:
        limits["memory"] = str(r.memory)
    if r.cpu_quota is not None:
        limits["cpu"] = f"{max(1, r.cpu_quota * 1000 // CPU_PERIOD)}m"
    return limits


def _volumes(
    mounts: Sequence[Mount], volumes_root: Path
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volume_mounts: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = []
    for m in mounts:
        if m.destination in _BUILTIN:
            continue
        name = f"vol{len(volumes)}"
        source = Path(m.source)
        if m.type == "tmpfs":
            volumes.append({"name": name, "emptyDir": {"medium": "Memory"}})
        elif m.type == "bind" and source.parent.parent == volumes_root:
            volumes.append(
                {"name": name, "persistentVolumeClaim": {"claimName": source.parent.name}}
            )
        elif m.type == "bind":
            volumes.append({"name": name, "hostPath": {"path": m.source}})
        else:
            continue
        mount: dict[str, Any] = {"name": name, "mountPath": m.destination}
        if "ro" in m.options:
            mount["readOnly"] = True
        volume_mounts.append(mount)
    return volume_mounts, volumes


def _security_context(c: _Container) -> dict[str, Any]:
    s = c.security
    context: dict[str, Any] = {}
    if s.privileged:
        context["privileged"] = True
    else:
        have, default = set(s.capabilities), set(caps.DEFAULT)
        add = [n for n in s.capabilities if n not in default]
        drop = [n for n in caps.DEFAULT if n not in have]
        capabilities: dict[str, Any] = {}
        if add:
            capabilities["add"] = add
        if drop:
            capabilities["drop"] = ["ALL"] if not have else drop
        if capabilities:
            context["capabilities"] = capabilities
    if s.no_new_privileges:
        context["allowPrivilegeEscalation"] = False
    if c.readonly_root:
        context["readOnlyRootFilesystem"] = True
    if s.seccomp == "default":
        context["seccompProfile"] = {"type": "RuntimeDefault"}
    elif s.seccomp == "unconfined":
        context["seccompProfile"] = {"type": "Unconfined"}
    else:
        context["seccompProfile"] = {"type": "Localhost", "localhostProfile": s.seccomp}
    uid, _, gid = c.user.partition(":")
    if uid.isdigit():
        context["runAsUser"] = int(uid)
        context["runAsNonRoot"] = int(uid) != 0
        if gid.isdigit():
            context["runAsGroup"] = int(gid)
    return context


def to_yaml(manifest: Mapping[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(dict(manifest), sort_keys=False, default_flow_style=False)


# --- play -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PodContainer:
    pod: str
    name: str  # the sandbox container's name: POD-CONTAINER (POD-infra for the infra container)
    options: RunOptions


def infra_name(pod: str) -> str:
    """The name of the Pod's infra container."""
    return f"{pod}-{INFRA}"


@dataclasses.dataclass(frozen=True)
class Pod:
    """A played Pod: its app containers (in manifest order, each joined to the infra
    container's network namespace unless hostNetwork) and the ports its infra publishes."""

    name: str
    containers: tuple[PodContainer, ...]
    publish: tuple[str, ...] = ()
    host_network: bool = False

    @property
    def infra(self) -> str | None:
        """The infra container's name; None with hostNetwork (no namespace to hold)."""
        return None if self.host_network else infra_name(self.name)

    def infra_container(self, rootfs: Path) -> PodContainer:
        """The infra container: the pause program (libexec.pause_rootfs) as PID 1 of a
        read-only root holding nothing else, on POD_NETWORK with the pod's published ports,
        with no capability and no restart policy (its namespace cannot come back: the app
        containers would be left in the old one)."""
        name = infra_name(self.name)
        options = RunOptions(
            image=str(rootfs),
            rootfs=True,
            command=("/pause",),
            name=name,
            read_only=True,
            network=POD_NETWORK,
            publish=self.publish,
            detach=True,
            cap_drop=("ALL",),
            security_opt=("no-new-privileges",),
        )
        return PodContainer(pod=self.name, name=name, options=options)


def load_manifest(path: Path) -> list[dict[str, Any]]:
    """The Pods in a YAML file (a Job's pod template counts as a Pod named after the Job)."""
    import yaml

    try:
        with open(path, "rb") as f:
            data = f.read(MAX_MANIFEST + 1)
    except OSError as e:
        raise UsageError(f"cannot read {path}", context=e.strerror) from e
    if len(data) > MAX_MANIFEST:
        raise ConfigError(f"{path}: larger than {MAX_MANIFEST} bytes")
    try:
        documents = [d for d in yaml.safe_load_all(data) if d is not None]
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML", context=str(e).splitlines()[0]) from e
    pods = []
    for index, doc in enumerate(documents):
        where = f"{path}: document {index + 1}"
        doc = _mapping(doc, where)
        kind = doc.get("kind")
        if kind == "Pod":
            pods.append(doc)
        elif kind == "Job":
            spec = _mapping(doc.get("spec"), f"{where}: spec")
            template = _mapping(spec.get("template"), f"{where}: spec.template")
            pods.append({"metadata": doc.get("metadata"), "spec": template.get("spec")})
        else:
            raise ConfigError(
                f"{where}: kind {kind!r} cannot be played",
                hint="sandbox kube play runs Pods and Jobs",
            )
    if not pods:
        raise ConfigError(f"{path}: no Pod in the file")
    return pods


def pod_plan(pod: Mapping[str, Any], *, base: Path) -> Pod:
    """The Pod as `kube play` runs it: one detached RunOptions per app container (joined to
    the infra container's network namespace) and the ports the infra container publishes
    (Pod.infra_container). base: for relative hostPaths."""
    metadata = _mapping(pod.get("metadata"), "metadata")
    pod_name = _string(metadata.get("name"), "metadata.name")
    if not _DNS_LABEL.match(pod_name):
        raise ConfigError(f"invalid pod name {pod_name!r}", hint="an RFC 1123 label: a-z, 0-9, '-'")
    spec = _mapping(pod.get("spec"), "spec")
    restart = _RESTART_BACK.get(str(spec.get("restartPolicy", "Always")))
    if restart is None:
        raise ConfigError(f"invalid spec.restartPolicy {spec.get('restartPolicy')!r}")
    network = "host" if spec.get("hostNetwork") is True else None
    volumes = _pod_volumes(spec.get("volumes"), pod_name, base)
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        raise ConfigError("spec.containers: a non-empty list is required")
    out = []
    for i, raw in enumerate(containers):
        where = f"spec.containers[{i}]"
        c = _mapping(raw, where)
        name = _string(c.get("name"), f"{where}.name")
        if not _DNS_LABEL.match(name):
            raise ConfigError(f"invalid {where}.name {name!r}", hint="an RFC 1123 label")
        if name == INFRA:
            raise ConfigError(
                f"{where}.name {name!r} is reserved: the pod's infra container is "
                f"{infra_name(pod_name)}",
                hint="rename the container",
            )
        image = _string(c.get("image"), f"{where}.image")
        command = _strings(c.get("command"), f"{where}.command")
        args = _strings(c.get("args"), f"{where}.args")
        entrypoint = None
        if c.get("command") is not None:
            import json

            entrypoint = json.dumps(list(command))
        env = []
        for j, e in enumerate(_list(c.get("env"), f"{where}.env")):
            e = _mapping(e, f"{where}.env[{j}]")
            if "valueFrom" in e:
                raise ConfigError(
                    f"{where}.env[{j}].valueFrom is not supported", hint="give a literal value"
                )
            key = _string(e.get("name"), f"{where}.env[{j}].name")
            value = e.get("value", "")
            if not isinstance(value, str):
                raise ConfigError(f"{where}.env[{j}].value must be a string")
            env.append(f"{key}={value}")
        for key in ("envFrom", "lifecycle", "livenessProbe", "readinessProbe", "startupProbe"):
            if key in c:
                raise ConfigError(f"{where}.{key} is not supported by sandbox kube play")
        publish = []
        for j, p in enumerate(_list(c.get("ports"), f"{where}.ports")):
            p = _mapping(p, f"{where}.ports[{j}]")
            port = _int(p.get("containerPort"), f"{where}.ports[{j}].containerPort")
            host = p.get("hostPort")
            protocol = str(p.get("protocol", "TCP")).lower()
            if host is not None:
                host_ip = p.get("hostIP")
                prefix = f"{_string(host_ip, 'hostIP')}:" if host_ip else ""
                publish.append(f"{prefix}{_int(host, 'hostPort')}:{port}/{protocol}")
        binds, tmpfs = [], []
        for j, m in enumerate(_list(c.get("volumeMounts"), f"{where}.volumeMounts")):
            m = _mapping(m, f"{where}.volumeMounts[{j}]")
            vname = _string(m.get("name"), f"{where}.volumeMounts[{j}].name")
            target = _string(m.get("mountPath"), f"{where}.volumeMounts[{j}].mountPath")
            if vname not in volumes:
                raise ConfigError(f"{where}.volumeMounts[{j}]: no volume named {vname!r}")
            kind, source = volumes[vname]
            if kind == "tmpfs":
                tmpfs.append(target)
            else:
                ro = ":ro" if m.get("readOnly") is True else ""
                binds.append(f"{source}:{target}{ro}")
        resources = _pod_resources(c.get("resources"), f"{where}.resources")
        sec = _security(spec.get("securityContext"), c.get("securityContext"), where)
        workdir = c.get("workingDir")
        out.append(
            PodContainer(
                pod=pod_name,
                name=f"{pod_name}-{name}",
                options=RunOptions(
                    image=image,
                    command=args if args or entrypoint else (),
                    entrypoint=entrypoint,
                    name=f"{pod_name}-{name}",
                    env=tuple(env),
                    workdir=_string(workdir, f"{where}.workingDir") if workdir else None,
                    volumes=tuple(binds),
                    tmpfs=tuple(tmpfs),
                    network=network,
                    publish=tuple(publish),
                    detach=True,
                    restart=restart,
                    resources=resources,
                    **sec,
                ),
            )
        )
    if network == "host":
        return Pod(pod_name, tuple(out), host_network=True)
    # One network namespace per pod: the infra container's, on the POD_NETWORK named network
    # (runtime/networks.py), where the pod's ports are published; every app container joins
    # it (--network container:POD-infra), so localhost reaches between them, and one may exit
    # or restart without taking the others' network (or the published ports) with it.
    ports = tuple(p for member in out for p in member.options.publish)
    joined = f"container:{infra_name(pod_name)}"
    shared = tuple(
        dataclasses.replace(m, options=dataclasses.replace(m.options, network=joined, publish=()))
        for m in out
    )
    return Pod(pod_name, shared, publish=ports)


def _pod_volumes(raw: Any, pod: str, base: Path) -> dict[str, tuple[str, str]]:
    from sandbox import volumes

    found: dict[str, tuple[str, str]] = {}
    for i, v in enumerate(_list(raw, "spec.volumes")):
        where = f"spec.volumes[{i}]"
        v = _mapping(v, where)
        name = _string(v.get("name"), f"{where}.name")
        if "hostPath" in v:
            path = _string(_mapping(v["hostPath"], where).get("path"), f"{where}.hostPath.path")
            found[name] = (
                "bind",
                str((base / path).resolve()) if not path.startswith("/") else path,
            )
        elif "emptyDir" in v:
            medium = (_mapping(v["emptyDir"] or {}, where)).get("medium")
            if medium == "Memory":
                found[name] = ("tmpfs", "")
            else:
                # Shared by the pod's containers: a named volume POD-NAME, removed by `down`.
                found[name] = ("emptydir", volumes.validate_name(f"{pod}-{name}"))
        elif "persistentVolumeClaim" in v:
            claim = _mapping(v["persistentVolumeClaim"], where).get("claimName")
            found[name] = ("volume", volumes.validate_name(_string(claim, f"{where}.claimName")))
        else:
            kinds = ", ".join(k for k in v if k != "name")
            raise ConfigError(
                f"{where}: volume type {kinds} is not supported",
                hint="use hostPath, emptyDir or persistentVolumeClaim",
            )
    return found


def empty_dir_volumes(pod: Mapping[str, Any]) -> list[str]:
    """The named volumes play made for the Pod's (disk) emptyDirs."""
    name = _string(_mapping(pod.get("metadata"), "metadata").get("name"), "metadata.name")
    spec = _mapping(pod.get("spec"), "spec")
    return [
        source
        for kind, source in _pod_volumes(spec.get("volumes"), name, Path("/")).values()
        if kind == "emptydir"
    ]


def _pod_resources(raw: Any, where: str) -> Resources:
    from sandbox.rootless import cgroups

    if raw is None:
        return Resources()
    limits = _mapping(_mapping(raw, where).get("limits") or {}, f"{where}.limits")
    memory = limits.get("memory")
    cpu = limits.get("cpu")
    cpus = None
    if cpu is not None:
        text = str(cpu)
        cpus = str(int(text[:-1]) / 1000) if text.endswith("m") and text[:-1].isdigit() else text
    mem = None
    if memory is not None:
        mem = str(memory)
        # Kubernetes' binary suffixes (Mi, Gi) as podman's (m, g).
        for suffix, ours in (("Ki", "k"), ("Mi", "m"), ("Gi", "g")):
            if mem.endswith(suffix):
                mem = mem[: -len(suffix)] + ours
    return cgroups.from_options(memory=mem, cpus=cpus)


def _security(pod_ctx: Any, ctr_ctx: Any, where: str) -> dict[str, Any]:
    merged = dict(_mapping(pod_ctx or {}, "spec.securityContext"))
    merged.update(_mapping(ctr_ctx or {}, f"{where}.securityContext"))
    out: dict[str, Any] = {"cap_add": (), "cap_drop": (), "security_opt": ()}
    opts: list[str] = []
    capabilities = _mapping(merged.get("capabilities") or {}, f"{where}.capabilities")
    out["cap_add"] = _strings(capabilities.get("add"), f"{where}.capabilities.add")
    out["cap_drop"] = _strings(capabilities.get("drop"), f"{where}.capabilities.drop")
    if merged.get("privileged") is True:
        out["privileged"] = True
    if merged.get("allowPrivilegeEscalation") is False:
        opts.append("no-new-privileges")
    if merged.get("readOnlyRootFilesystem") is True:
        out["read_only"] = True
    profile = _mapping(merged.get("seccompProfile") or {}, f"{where}.seccompProfile")
    kind = profile.get("type")
    if kind == "Unconfined":
        opts.append("seccomp=unconfined")
    elif kind == "Localhost":
        opts.append(f"seccomp={_string(profile.get('localhostProfile'), 'localhostProfile')}")
    elif kind not in (None, "RuntimeDefault"):
        raise ConfigError(f"{where}.seccompProfile.type {kind!r} is not supported")
    uid, gid = merged.get("runAsUser"), merged.get("runAsGroup")
    if uid is not None:
        user = str(_int(uid, f"{where}.runAsUser"))
        if gid is not None:
            user += f":{_int(gid, f'{where}.runAsGroup')}"
        if merged.get("runAsNonRoot") is True and user.partition(":")[0] == "0":
            raise ConfigError(f"{where}: runAsNonRoot with runAsUser 0")
        out["user"] = user
    out["security_opt"] = tuple(opts)
    return out


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: a mapping is required")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{where}: a list is required")
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: a non-empty string is required")
    return value


def _strings(value: Any, where: str) -> tuple[str, ...]:
    items = _list(value, where)
    if not all(isinstance(i, str) for i in items):
        raise ConfigError(f"{where}: a list of strings is required")
    return tuple(items)


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
        raise ConfigError(f"{where}: a non-negative integer is required")
    return value
