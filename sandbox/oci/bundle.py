"""OCI bundles: `sandbox run --bundle DIR` and the id mapping a bundle's config.json may have.

A bundle is a directory holding config.json and the root filesystem it names (root.path,
relative to the bundle). It runs as it stands: the spec comes from sandbox/oci/spec.py, the
root is used in place (a Root of kind "dir"), and the config's uidMappings/gidMappings are
used when the user's subordinate ranges (or, inside a user namespace, the ids it maps) cover
them; a mapping we cannot write is refused before anything is created.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sandbox.errors import UsageError
from sandbox.rootless.idmap import IdMapping

Warn = Callable[[str], None]


def mappable(mapping: IdMapping, allowed: IdMapping) -> str | None:
    """None when every host id of mapping lies in allowed's host ids; else what does not."""
    for kind, wanted, have in (
        ("uid", mapping.uids, allowed.uids),
        ("gid", mapping.gids, allowed.gids),
    ):
        spans = [(r.outside, r.outside + r.size) for r in have]
        for r in wanted:
            if not any(lo <= r.outside and r.outside + r.size <= hi for lo, hi in spans):
                return (
                    f"host {kind}s {r.outside}-{r.outside + r.size - 1} "
                    f"(linux.{kind}Mappings) are not this user's to map"
                )
    return None


def config_mapping(config: dict[str, Any], fallback: IdMapping) -> IdMapping:
    """The mapping for a bundle: its own when it has one we may write, else fallback."""
    from sandbox.oci import spec as oci

    ctx = oci.Context(Path("."), "", fallback)
    linux = config.get("linux") or {}
    if not (linux.get("uidMappings") or linux.get("gidMappings")):
        return fallback
    wanted = oci._mapping(linux, ctx, {})
    problem = mappable(wanted, fallback)
    if problem is not None:
        raise UsageError(
            f"config.json: {problem}",
            hint="map ids from your own uid and the ranges in /etc/subuid and /etc/subgid, "
            "or remove linux.uidMappings/gidMappings to get the default mapping",
        )
    if wanted.uid_count == 1 and wanted.gid_count == 1:
        # One id needs no newuidmap: written directly, with setgroups denied.
        return dataclasses.replace(wanted, single_reason="the bundle's config.json maps one id")
    return wanted


def create(settings: Any, options: Any, warn: Warn) -> tuple[Any, Any]:
    """`sandbox run --bundle DIR`: the container's record and spec from the bundle."""
    from sandbox import spec as specs
    from sandbox.oci import spec as oci
    from sandbox.runtime import container, names, state
    from sandbox.runtime.state import Container, ContainerStore

    bundle = Path(os.path.abspath(options.bundle))
    config = oci.load(bundle)
    if not oci.wants_user_namespace(config):
        raise UsageError(
            "config.json: linux.namespaces: a rootless container needs a user namespace",
            hint='add {"type": "user"} to linux.namespaces (sandbox oci spec --rootless)',
        )
    mapping = config_mapping(config, container.mapping_for(settings, options.userns, warn))
    store = ContainerStore(settings.containers_root)
    container_id = store.new_id()
    name = options.name or names.generate()  # re-drawn under the lock if taken
    if options.name is not None:
        specs.validate_name(options.name)
    ctx = oci.Context(bundle, container_id, mapping)
    spec = oci.from_config(config, ctx)
    if not spec.root.path.is_dir():
        raise UsageError(
            f"config.json: root.path: {spec.root.path} is not a directory",
            hint="unpack the root filesystem there (root.path is relative to the bundle)",
        )
    spec = dataclasses.replace(spec, id=container_id, name=name, image=str(bundle))
    manager, enforced = container.cgroup_manager(
        settings, dataclasses.replace(options, resources=spec.resources), store, warn
    )
    record = store.create(
        Container(
            id=container_id,
            name=name,
            image=str(bundle),
            image_id=None,
            command=spec.process.args,
            created=state.now(),
            remove=options.remove,
            rootfs_kind="dir",
            cgroup_manager=manager.name,
            limits=tuple(
                {"option": x.option, "file": x.file, "value": x.value, "enforced": enforced}
                for x in spec.resources.limits()
            ),
        ),
        generated_name=options.name is None,
    )
    if record.name != spec.name:
        spec = dataclasses.replace(spec, name=record.name)
    try:
        if spec.security.seccomp == "config.json":
            # Kept beside the container, so its config.json can be derived again.
            kept = store.dir(container_id) / "seccomp.json"
            kept.write_text(json.dumps(config["linux"]["seccomp"]))
            security = dataclasses.replace(spec.security, seccomp=str(kept))
            spec = dataclasses.replace(spec, security=security)
        store.save_spec(spec)
    except BaseException:
        container.remove_files(store, record, mapping)
        raise
    return spec, record
