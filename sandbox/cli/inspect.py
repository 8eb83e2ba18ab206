"""`sandbox inspect`: podman-shaped JSON for containers and images, Go-template-like fields, and
the isolation report of a live container (--isolation).

A container's JSON comes from its record (runtime/state.py) and its stored spec.json, read as
plain JSON so a spec written by another version still shows. --isolation reads the live
process instead (runtime/isolation.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import typer

INSPECT_HELP = """Show what sandbox knows about containers or images, as JSON (a list, as podman
prints it), or the fields a --format template names.

--isolation draws what a running container actually got, read from /proc: namespaces (shared
with the host or not), id maps, cgroup and limits, seccomp, capabilities, no_new_privs, masked
paths, network.

Examples:

  sandbox inspect web

  sandbox inspect --format '{{.State.Status}} {{.State.Pid}}' web

  sandbox inspect --type image busybox

  sandbox inspect --isolation web

  sandbox inspect --isolation --format json web
"""

_FIELD_RE = re.compile(r"{{\s*(json\s+)?\.([A-Za-z0-9_.]*)\s*}}")


def template(text: str, data: Mapping[str, Any]) -> str:
    """Expand {{.A.B}} and {{json .A}} in text from data (the subset of Go templates people
    use with podman inspect)."""
    from sandbox.errors import UsageError

    def field(match: re.Match[str]) -> str:
        value: Any = data
        path = match.group(2)
        for part in path.split(".") if path else []:
            if not isinstance(value, Mapping) or part not in value:
                raise UsageError(
                    f"--format: no field .{path}",
                    hint="print the JSON (no --format) to see the field names",
                )
            value = value[part]
        if match.group(1) or isinstance(value, (dict, list)):
            return json.dumps(value)
        if value is None:
            return "<nil>"
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    if "{{" in text and not _FIELD_RE.search(text):
        raise UsageError(
            f"--format {text!r} names no field", hint="for example '{{.State.Status}}'"
        )
    return _FIELD_RE.sub(field, text).replace("\\n", "\n").replace("\\t", "\t")


def _spec(store: Any, container_id: str) -> dict[str, Any]:
    from sandbox.runtime.state import SPEC

    try:
        data = json.loads((store.dir(container_id) / SPEC).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _env_value(env: list[str], key: str) -> str | None:
    for item in env:
        k, _, v = item.partition("=")
        if k == key:
            return v
    return None


def container_json(container: Any, spec: Mapping[str, Any]) -> dict[str, Any]:
    """podman inspect's shape, from the record and the spec (fields we do not have are left
    out rather than invented)."""
    process = spec.get("process") or {}
    args = list(container.command)
    running = container.status == "running"
    network = spec.get("network") or {}
    mounts = []
    for m in spec.get("mounts") or ():
        if not isinstance(m, Mapping):
            continue
        options = list(m.get("options") or ())
        if m.get("type") == "bind" or "bind" in options or "rbind" in options:
            mounts.append(
                {
                    "Type": "bind",
                    "Source": m.get("source"),
                    "Destination": m.get("destination"),
                    "Options": options,
                    "RW": "ro" not in options,
                }
            )
        elif m.get("type") == "tmpfs" and m.get("destination") not in ("/dev", "/dev/shm"):
            mounts.append(
                {
                    "Type": "tmpfs",
                    "Source": "tmpfs",
                    "Destination": m.get("destination"),
                    "Options": options,
                    "RW": "ro" not in options,
                }
            )
    ports: dict[str, list[dict[str, str]]] = {}
    for p in network.get("ports") or ():
        key = f"{p.get('container_port')}/{p.get('protocol', 'tcp')}"
        ports.setdefault(key, []).append(
            {"HostIp": str(p.get("host_ip", "")), "HostPort": str(p.get("host_port"))}
        )
    mapping = spec.get("mapping") or {}
    root = spec.get("root") or {}
    return {
        "Id": container.id,
        "Name": container.name,
        "Created": container.created,
        "Path": args[0] if args else "",
        "Args": args[1:],
        "State": {
            "Status": container.status,
            "Running": running,
            "Pid": container.pid if running else 0,
            "ExitCode": container.exit_code if container.exit_code is not None else 0,
            "StartedAt": container.started_at,
            "FinishedAt": container.finished_at,
            "OOMKilled": container.oom_killed,
        },
        "RestartCount": container.restart_count,
        # What was asked for; `inspect --isolation` shows what the live process really has.
        "Security": _security(spec),
        "Cgroup": {
            "Manager": container.cgroup_manager,
            "Path": container.cgroup_path,
            "Limits": [dict(limit) for limit in container.limits],
        },
        "Image": container.image_id,
        "ImageName": container.image,
        "Rootfs": root.get("path") if root.get("kind") == "dir" else "",
        "Driver": container.rootfs_kind,
        "Config": {
            "Hostname": spec.get("hostname"),
            "Env": list(process.get("env") or ()),
            "Cmd": args,
            "Entrypoint": [],
            "WorkingDir": process.get("cwd"),
            "User": process.get("user"),
            "Tty": bool(process.get("terminal")),
            "OpenStdin": bool(process.get("interactive")),
            "StopSignal": spec.get("stop_signal"),
        },
        "HostConfig": {
            "AutoRemove": container.remove,
            # podman's "container:ID" for a joined namespace (a pod's containers: POD-infra).
            "NetworkMode": (
                f"container:{network.get('name')}"
                if network.get("mode") == "container"
                else network.get("mode")
            ),
            "PortBindings": ports,
            "ReadonlyRootfs": bool(root.get("readonly")),
            "RestartPolicy": {"Name": spec.get("restart", "no")},
            "Init": bool(spec.get("init")),
            "IDMappings": {
                "UidMap": [_id_text(r) for r in mapping.get("uids") or ()],
                "GidMap": [_id_text(r) for r in mapping.get("gids") or ()],
            },
        },
        "Mounts": mounts,
        "NetworkSettings": {"Ports": ports, "Mode": network.get("mode")},
        "Namespaces": list(spec.get("namespaces") or ()),
    }


def _security(spec: Mapping[str, Any]) -> dict[str, object]:
    """The effective capabilities, seccomp, no_new_privs, masked paths and rlimits."""
    from sandbox import codec
    from sandbox.security import Security

    raw = spec.get("security")
    if not isinstance(raw, Mapping):
        return {}
    try:
        return codec.from_json(Security, dict(raw)).describe()
    except (TypeError, ValueError, KeyError):
        return {}


def _id_text(r: Any) -> str:
    if isinstance(r, Mapping):
        return f"{r.get('inside')}:{r.get('outside')}:{r.get('size')}"
    return str(r)


def image_json(image: Any) -> dict[str, Any]:
    return {
        "Id": image.id,
        "Digest": image.digest,
        "RepoTags": list(image.names),
        "RepoDigests": list(image.repo_digests),
        "Created": image.created,
        "Size": image.size,
        "Config": dict(image.config),
        "RootFS": {"Type": "layers", "Layers": list(image.layers)},
    }


def register(app: typer.Typer) -> None:
    @app.command("inspect", help=INSPECT_HELP)
    def inspect(
        names: list[str] = typer.Argument(..., help="Container or image names or ids."),
        format_: str = typer.Option(
            None,
            "--format",
            "-f",
            help="json (the default; with --isolation the default is a box), or a template "
            "such as '{{.State.Status}}'.",
        ),
        type_: str = typer.Option("all", "--type", "-t", help="container, image or all."),
        isolation: bool = typer.Option(
            False, "--isolation", help="Report what a running container actually got."
        ),
    ) -> None:
        from sandbox import config
        from sandbox.cli import render
        from sandbox.errors import ContainerNotFound, ImageNotFound, UsageError
        from sandbox.runtime.state import ContainerStore

        if type_ not in ("all", "container", "image"):
            raise UsageError(f"unknown --type {type_!r}", hint="use container, image or all")
        settings = config.load()
        store = ContainerStore(settings.containers_root)
        if isolation:
            if type_ == "image":
                raise UsageError("--isolation reports on containers, not images")
            for name in names:
                show_isolation(store, name, format_ or "box")
            return
        format_ = format_ or "json"
        found: list[dict[str, Any]] = []
        for name in names:
            item: dict[str, Any] | None = None
            if type_ in ("all", "container"):
                try:
                    c = store.lookup(name)
                    item = container_json(c, _spec(store, c.id))
                    if "OCIConfig" in format_:  # config.json is large: only when asked for
                        from sandbox.oci import spec as oci

                        item["OCIConfig"] = oci.for_container(store, c.id)
                except ContainerNotFound:
                    if type_ == "container":
                        raise
            if item is None:
                from sandbox.cli.images import _store

                try:
                    item = image_json(_store().lookup(name))
                except ImageNotFound as e:
                    if type_ == "image":
                        raise
                    raise UsageError(
                        f"no container or image named {name!r}",
                        hint="'sandbox ps -a' lists containers, 'sandbox images' images",
                    ) from e
            found.append(item)
        if format_ == "json":
            render.json_out(found)
        else:
            for item in found:
                print(template(format_, item))


def show_isolation(store: Any, name: str, format_: str) -> None:
    """Print the isolation report of a running container (box, json or a template)."""
    from sandbox.cli import render
    from sandbox.errors import ContainerError
    from sandbox.runtime import isolation

    container = store.lookup(name)
    if container.status != "running":
        raise ContainerError(
            f"container {container.name} is not running",
            context=f"status {container.status}",
            hint="the isolation report reads the live process; start it with 'sandbox run'",
        )
    report = isolation.read(container.id, container.name, container.pid, _spec(store, container.id))
    if format_ == "json":
        render.json_out(isolation.as_json(report))
    elif format_ in ("box", "table", "text"):
        from sandbox.cli import isolation as draw

        draw.render(report)
    else:
        print(template(format_, isolation.as_json(report)))
