"""`sandbox info`: the host, and what sandbox would use on it, as a document (yaml or json).

Every value is looked up now: the id mapping a run would get, the storage driver the probe
picks, the cgroup layout from mountinfo, the network helper on PATH and its version, the
registries file that is in force.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from typing import Any

import typer

INFO_HELP = """Show the host and what sandbox uses on it: kernel, id mappings, storage driver and
paths, cgroup version and manager, network backend and helper versions, registries.

Examples:

  sandbox info

  sandbox info --format json | jq .store
"""


def _version(program: str) -> dict[str, str | None]:
    path = shutil.which(program)
    if path is None:
        return {"path": None, "version": None}
    try:
        done = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=5, check=False
        )
        lines = [line.strip() for line in (done.stdout or done.stderr).splitlines() if line]
        # fuse-overlayfs prints fusermount's version first: prefer the line naming the program.
        named = [line for line in lines if program in line]
        version = named[0] if named else (lines[0] if lines else None)
    except (OSError, subprocess.SubprocessError):
        version = None
    return {"path": path, "version": version}


def _os_release() -> str:
    try:
        with open("/etc/os-release") as f:
            text = f.read()
        for line in text.splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.partition("=")[2].strip('"')
    except OSError:
        pass
    return "unknown"


def _count(path: Any) -> int:
    try:
        return sum(1 for p in path.iterdir() if not p.name.startswith("."))
    except OSError:
        return 0


def gather() -> dict[str, Any]:
    from sandbox import __version__, config
    from sandbox.rootless import features, idmap
    from sandbox.runtime import container as runtime

    settings = config.load()
    mapping = idmap.for_current_user(settings.userns)
    user, uid, gid = idmap.current_user()
    with open("/proc/self/mountinfo") as f:
        layout, cgroup_v2_at = features.cgroup_layout(f.read())
    delegation = features.probe("cgroup_delegation")
    network_mode = settings.network_mode
    if network_mode == "auto":
        from sandbox.runtime import network

        network_mode = network.default_mode()
    ports = features.probe("unprivileged_ports")
    return {
        "host": {
            "hostname": platform.node(),
            "os": _os_release(),
            "kernel": platform.release(),
            "arch": platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "sandbox": __version__,
            "nested": features.probe("nested").detail,
        },
        "user": {
            "name": user,
            "uid": uid,
            "gid": gid,
            "idmappings": {
                "uidmap": [vars(r) for r in mapping.uids],
                "gidmap": [vars(r) for r in mapping.gids],
                "single": mapping.single_reason,
            },
            "newuidmap": _version("newuidmap")["path"],
            "newgidmap": _version("newgidmap")["path"],
        },
        "store": {
            "driver": runtime.storage_driver(settings),
            "driver_setting": settings.storage_driver,
            "data_root": str(settings.data_root),
            "storage_root": str(settings.storage_root),
            "containers_root": str(settings.containers_root),
            "runtime_root": str(settings.runtime_root),
            "images": _images(settings),
            "containers": _count(settings.containers_root),
            "filesystem": features.probe("storage_fs").detail,
            "fuse_overlayfs": _version("fuse-overlayfs"),
        },
        "cgroups": {
            "version": {"unified": "v2", "hybrid": "v1 (hybrid)", "legacy": "v1"}.get(
                layout, "none"
            ),
            "layout": layout,
            "v2_mount": cgroup_v2_at or None,
            "manager": settings.cgroup_manager,
            "delegated": delegation.ok,
            "delegation": delegation.detail,
        },
        "network": {
            "mode": network_mode,
            "mode_setting": settings.network_mode,
            "slirp4netns": _version("slirp4netns"),
            "pasta": _version("pasta"),
            "unprivileged_port_start": ports.detail,
        },
        "registries": _registries(settings),
        "config": {
            "files": [
                str(p) for p in (config.SYSTEM_CONFIG, config.user_config_file()) if p.exists()
            ],
        },
    }


def _images(settings: Any) -> int:
    import json

    try:
        doc = json.loads((settings.storage_root / "images.json").read_text())
    except (OSError, ValueError):
        return 0
    images = doc.get("images") if isinstance(doc, dict) else doc
    return len(images) if isinstance(images, (list, dict)) else 0


def _registries(settings: Any) -> dict[str, Any]:
    from pathlib import Path

    from sandbox.images import registries

    path = Path(settings.registries_file) if settings.registries_file else None
    conf = registries.load(path)
    return {
        "file": str(path or registries.config_file()),
        "loaded_from": conf.source,
        "search": list(conf.search),
        "aliases": len(conf.aliases),
        "registries": [
            {
                "prefix": r.prefix,
                "location": r.location,
                "insecure": r.insecure,
                "blocked": r.blocked,
                "mirrors": [m.location for m in r.mirrors],
            }
            for r in conf.registries
        ],
    }


def register(app: typer.Typer) -> None:
    @app.command("info", help=INFO_HELP)
    def info(
        format_: str = typer.Option("yaml", "--format", help="yaml or json."),
    ) -> None:
        from sandbox.cli import render
        from sandbox.errors import UsageError

        if format_ not in ("yaml", "json"):
            raise UsageError(f"unknown --format {format_!r}", hint="use yaml or json")
        data = gather()
        if format_ == "json":
            render.json_out(data)
        else:
            import yaml

            print(yaml.safe_dump(data, sort_keys=False, width=100).rstrip())
