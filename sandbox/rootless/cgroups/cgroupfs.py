"""The cgroupfs manager: containers in an already-delegated cgroup v2 subtree.

For a CI job or a container that was handed a cgroup of its own (writable by this user): each
container gets BASE/sandbox-ID, with the controllers its limits need enabled in BASE. The
kernel allows controllers in a cgroup's children only while the cgroup itself holds no
process ("no internal processes"), so when sandbox runs in BASE itself it first moves itself
into a leaf BASE/sandbox-supervisor-PID, which the next command removes once it is empty.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterable
from pathlib import Path

from sandbox.rootless.cgroups import base
from sandbox.rootless.cgroups.base import PREFIX, CgroupError
from sandbox.rootless.cgroups.resources import Resources

SUPERVISOR = "sandbox-supervisor-"


class Cgroupfs:
    name = "cgroupfs"

    def __init__(self, parent: Path) -> None:
        self.parent = parent

    @classmethod
    def delegated(cls, mount: Path = base.MOUNT) -> Cgroupfs | None:
        """The manager for this process's own cgroup, when that cgroup is writable by us."""
        own = base.own_cgroup()
        if own is None or not base.unified(mount):
            return None
        path = mount / own.lstrip("/")
        if path.name.startswith(SUPERVISOR):  # we moved ourselves there (see _enable)
            path = path.parent
        for name in ("", "cgroup.procs", "cgroup.subtree_control"):
            if not os.access(path / name, os.W_OK):
                return None
        return cls(path)

    def controllers(self) -> set[str]:
        return base.read_controllers(self.parent)

    def path(self, container_id: str) -> Path:
        return self.parent / f"{PREFIX}{container_id}"

    def enter(self, container_id: str, pid: int, resources: Resources) -> Path:
        self._enable(base.to_enable(resources, self.controllers()))
        path = self.path(container_id)
        try:
            path.mkdir()
        except OSError as e:
            raise CgroupError(f"cannot create the cgroup {path}", context=e.strerror) from e
        try:
            base.apply(path, resources)
            base.write(path / "cgroup.procs", str(pid))
        except CgroupError:
            with contextlib.suppress(OSError):
                os.rmdir(path)
            raise
        return path

    def _enable(self, controllers: list[str]) -> None:
        control = self.parent / "cgroup.subtree_control"
        try:
            enabled = set(control.read_text().split())
        except OSError as e:
            raise CgroupError(f"cannot read {control}", context=e.strerror) from e
        wanted = [c for c in controllers if c not in enabled]
        if not wanted:
            return
        value = " ".join(f"+{c}" for c in wanted)
        try:
            base.write(control, value)
        except CgroupError as error:
            cause = error.__cause__
            if not (isinstance(cause, OSError) and cause.errno == errno.EBUSY):
                raise
            # We (or our shell) are in the parent cgroup: move ourselves into a leaf.
            leaf = self.parent / f"{SUPERVISOR}{os.getpid()}"
            leaf.mkdir(exist_ok=True)
            base.write(leaf / "cgroup.procs", str(os.getpid()))
            base.write(control, value)

    def release(self, container_id: str) -> None:
        return None

    def remove(self, container_id: str) -> None:
        base.rmdir_tree(self.path(container_id))

    def cleanup(self, live_ids: Iterable[str]) -> None:
        live = {f"{PREFIX}{i}" for i in live_ids} | {f"{SUPERVISOR}{os.getpid()}"}
        with contextlib.suppress(OSError):
            for entry in self.parent.iterdir():
                if entry.name.startswith(PREFIX) and entry.name not in live and entry.is_dir():
                    with contextlib.suppress(CgroupError):
                        base.rmdir_tree(entry)
