"""`sandbox diff`: what a container changed, read from its overlay upper directory.

An entry in the upper directory is A(dded) when no image layer has that path, C(hanged) when
one does; an overlay whiteout (a 0:0 character device) is D(eleted). Directories that only
hold changes show as C, as podman shows them. The upper directory belongs to subordinate ids,
so it is walked inside the user namespace.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from sandbox.config import Settings
from sandbox.errors import ContainerError
from sandbox.rootless import userns
from sandbox.rootless.channel import Channel
from sandbox.runtime.state import ContainerStore

_BATCH = 500


def changes(upper: Path, lowers: Sequence[Path]) -> list[tuple[str, str]]:
    """(kind, path) for every change in upper, sorted by path."""
    found = []
    for dirpath, dirnames, filenames in os.walk(upper):
        rel_dir = os.path.relpath(dirpath, upper)
        for name in [*dirnames, *filenames]:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                found.append(("D", "/" + rel))
                continue
            below = any(os.path.lexists(layer / rel) for layer in lowers)
            found.append(("C" if below else "A", "/" + rel))
    return sorted(found, key=lambda change: change[1])


def diff(settings: Settings, name_or_id: str) -> list[tuple[str, str]]:
    store = ContainerStore(settings.containers_root)
    container = store.lookup(name_or_id)
    spec = store.load_spec(container.id)
    if spec.root.kind != "overlay" or spec.root.upper is None:
        raise ContainerError(
            f"cannot list the changes of {container.name}",
            context=f"its root filesystem uses the {spec.root.kind} driver",
            hint="diff reads the overlay upper directory",
        )
    upper, lowers = spec.root.upper, spec.root.lowers
    result: list[tuple[str, str]] = []

    def walk(channel: Channel) -> int:
        found = changes(upper, lowers)
        for start in range(0, len(found), _BATCH):
            channel.send("changes", items=found[start : start + _BATCH])
        return 0

    def collect(message: dict[str, object], fds: list[int]) -> None:
        items = message.get("items")
        assert isinstance(items, list)
        result.extend((str(kind), str(path)) for kind, path in items)

    userns.run(spec.mapping, walk, on_message=collect)
    return result
