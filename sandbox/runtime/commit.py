"""`sandbox commit`: a container's changes (its overlay upper directory) become a new image
layer on top of the container's image.

The upper directory belongs to subordinate ids, so it is read inside the user namespace and
written as an OCI layer tarball: an overlay whiteout (a 0:0 character device) becomes an empty
`.wh.NAME` file, a directory marked opaque (user.overlay.opaque=y) gets a `.wh..wh..opq` entry.
The image store then unpacks that layer the way it unpacks any pulled layer.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from sandbox import spec as specs
from sandbox.config import Settings
from sandbox.errors import ContainerError, ImageError, ImageNotFound
from sandbox.images.store import Image, ImageStore
from sandbox.rootless import idmap, userns
from sandbox.rootless.channel import Channel
from sandbox.runtime.state import ContainerStore

OPAQUE_XATTR = "user.overlay.opaque"
# Set by sandbox for every container; not part of what the user built.
_RUNTIME_ENV = ("HOSTNAME", "container", "TERM")


def layer_tar(upper: Path, out: int) -> None:
    """Write upper as an OCI layer tarball to the file open on out."""
    with (
        os.fdopen(out, "wb") as f,
        tarfile.open(fileobj=f, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        for dirpath, dirnames, filenames in os.walk(upper):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, upper)
            if rel_dir != "." and _opaque(dirpath):
                tar.addfile(_whiteout(f"{rel_dir}/.wh..wh..opq"))
            for name in sorted([*dirnames, *filenames]):
                path = os.path.join(dirpath, name)
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                st = os.lstat(path)
                if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                    parent = os.path.dirname(rel)
                    tar.addfile(_whiteout(os.path.join(parent, f".wh.{name}")))
                    continue
                info = tar.gettarinfo(path, arcname=rel)
                if info.isreg():
                    with open(path, "rb") as data:
                        tar.addfile(info, data)
                else:
                    tar.addfile(info)


def _opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _whiteout(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 0
    info.mode = 0o644
    return info


def image_config(base: dict[str, Any], spec: specs.ContainerSpec) -> dict[str, Any]:
    """The base image's configuration with the container's command, environment, working
    directory and user (as podman commit keeps them)."""
    config = dict(base)
    entrypoint = list(base.get("Entrypoint") or [])
    args = list(spec.process.args)
    if entrypoint and args[: len(entrypoint)] == entrypoint:
        config["Cmd"] = args[len(entrypoint) :]
    else:
        config["Entrypoint"] = []
        config["Cmd"] = args
    config["Env"] = [e for e in spec.process.env if e.partition("=")[0] not in _RUNTIME_ENV]
    config["WorkingDir"] = spec.process.cwd
    config["User"] = spec.process.user if spec.process.user != "0" else base.get("User", "")
    return {k: v for k, v in config.items() if v not in (None, "")}


def commit(
    settings: Settings, name_or_id: str, image_name: str | None, *, message: str = ""
) -> Image:
    store = ContainerStore(settings.containers_root)
    container = store.lookup(name_or_id)
    spec = store.load_spec(container.id)
    if spec.root.kind != "overlay" or spec.root.upper is None:
        raise ContainerError(
            f"cannot commit {container.name}",
            context=f"its root filesystem uses the {spec.root.kind} driver",
            hint="commit reads the overlay upper directory",
        )
    # The new layer is stored like every other, with the store's mapping; a keep-id
    # container's own mapping differs (its lowers are shifted) and would store it shifted.
    store_mapping = spec.mapping
    if spec.root.shifted is not None:
        store_mapping = idmap.for_current_user("keep-id")
    images = ImageStore(settings.storage_root, store_mapping)
    base: Image | None = None
    if spec.image_id is not None:
        try:
            base = images.lookup(spec.image_id)
        except ImageNotFound as e:
            raise ContainerError(
                f"the image of {container.name} is gone",
                hint="a commit needs the layers below the container",
            ) from e
    upper = spec.root.upper
    fd, path = tempfile.mkstemp(prefix=".commit-", suffix=".tar", dir=settings.data_root)
    try:

        def write(_channel: Channel) -> int:
            try:
                layer_tar(upper, fd)
            except OSError as e:
                from sandbox.rootless import filesystems

                if not filesystems.is_full(e):
                    raise
                raise ImageError(
                    filesystems.full_message(e, Path(path)),
                    context=f"while writing the layer of {container.name} to {path}",
                    hint="free some space there (sandbox rmi or sandbox image prune)",
                ) from e
            return 0

        userns.run(spec.mapping, write)
        return images.commit_layer(
            Path(path),
            base=base,
            config=image_config(dict(base.config) if base else {}, spec),
            name=image_name,
            comment=message,
        )
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
