"""Named volumes: directories that outlive containers (job caches, dev homes, `-v NAME:/path`).

A volume NAME is the directory $XDG_DATA_HOME/sandbox/volumes/NAME/_data (podman's layout),
created on first use and owned by the user, which is the container's root under the usual
mapping (0 -> the user's uid). Files a container writes there as other users belong to
subordinate ids, so a volume is removed from inside a user namespace, as containers are.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from pathlib import Path

from sandbox.errors import ConfigError, SandboxError, UsageError

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
DATA = "_data"


@dataclasses.dataclass(frozen=True)
class Volume:
    name: str
    path: Path  # the directory mounted into containers

    @property
    def created(self) -> float:
        return self.path.stat().st_mtime


def root(data_root: Path) -> Path:
    return data_root / "volumes"


def validate_name(name: str) -> str:
    if not _NAME_RE.match(name) or len(name) > 128:
        raise ConfigError(
            f"invalid volume name {name!r}",
            hint="volume names start with a letter or digit and contain only letters, "
            "digits, '_', '.' and '-'",
        )
    return name


def is_name(source: str) -> bool:
    """-v's SOURCE names a volume (not a path) when it has no '/' and does not start with '.'."""
    return bool(source) and "/" not in source and not source.startswith((".", "~"))


def path_of(data_root: Path, name: str) -> Path:
    return root(data_root) / validate_name(name) / DATA


def create(data_root: Path, name: str, *, exist_ok: bool = True) -> Volume:
    path = path_of(data_root, name)
    if path.is_dir():
        if not exist_ok:
            raise UsageError(
                f"volume {name} already exists", hint=f"remove it with 'sandbox volume rm {name}'"
            )
        return Volume(name, path)
    # 0755 directories, as a fresh container's root sees an empty volume in podman.
    path.mkdir(mode=0o755, parents=True, exist_ok=True)
    return Volume(name, path)


def list_volumes(data_root: Path) -> list[Volume]:
    base = root(data_root)
    try:
        names = sorted(os.listdir(base))
    except FileNotFoundError:
        return []
    return [Volume(n, base / n / DATA) for n in names if (base / n / DATA).is_dir()]


def get(data_root: Path, name: str) -> Volume:
    path = path_of(data_root, name)
    if not path.is_dir():
        raise UsageError(f"no volume {name}", hint="'sandbox volume ls' lists the volumes")
    return Volume(name, path)


def remove(data_root: Path, name: str, mapping: object) -> None:
    """Delete a volume and everything in it (files of subordinate ids included)."""
    from sandbox.rootless import userns
    from sandbox.rootless.channel import Channel
    from sandbox.rootless.idmap import IdMapping

    volume = get(data_root, name)
    top = volume.path.parent

    def rmtree(_channel: Channel) -> int:
        shutil.rmtree(top)
        return 0

    assert isinstance(mapping, IdMapping)
    try:
        userns.run(mapping, rmtree)
    except SandboxError as error:
        raise UsageError(
            f"cannot remove volume {name}",
            context=error.message,
            hint=f"'sandbox unshare rm -rf {top}' removes it",
        ) from error
