"""Container records: one directory per container, written atomically, guarded by locks.

containers_root/<id>/container.json holds the record (configuration and last known state).
Writers take an flock on containers_root/.lock for name reservation and removal; a record is
replaced with write-temp + fsync + rename, so a reader never sees half of one. Every read
reconciles a "running" record with the kernel: if its PID 1 is gone (or is another process
with the same number, or the machine rebooted), the container shows as exited.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sandbox.errors import ContainerError, ContainerNotFound, UsageError

RECORD = "container.json"


@dataclasses.dataclass(frozen=True)
class Container:
    id: str
    name: str
    image: str
    image_id: str | None
    command: tuple[str, ...]
    created: str
    status: str = "created"  # created | running | exited
    pid: int = 0
    pid_start: int = 0  # /proc/PID/stat starttime, to tell a reused PID apart
    boot_id: str = ""
    exit_code: int | None = None
    started_at: str | None = None
    finished_at: str | None = None
    remove: bool = False
    rootfs_kind: str = "overlay"

    @property
    def short_id(self) -> str:
        return self.id[:12]


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (after the parenthesised, possibly spaced, comm)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(data[data.rindex(")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None


def is_alive(container: Container) -> bool:
    if container.pid <= 0 or container.boot_id != boot_id():
        return False
    return process_start_time(container.pid) == container.pid_start


class ContainerStore:
    def __init__(self, root: Path):
        self.root = root

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def dir(self, container_id: str) -> Path:
        return self.root / container_id

    def new_id(self) -> str:
        return secrets.token_hex(32)

    def create(self, container: Container) -> Container:
        """Reserve the name and write the record; the name must be unique."""
        with self.lock():
            for other in self._load_all():
                if other.name == container.name:
                    raise UsageError(
                        f"the container name {container.name!r} is already in use by "
                        f"{other.short_id}",
                        hint=f"remove it with 'sandbox rm {container.name}' or choose "
                        "another --name",
                    )
            path = self.dir(container.id)
            path.mkdir(mode=0o700)
            self._write(container)
        return container

    def unique_name(self) -> str:
        from sandbox.runtime.names import generate

        taken = {c.name for c in self._load_all()}
        for _ in range(100):
            name = generate()
            if name not in taken:
                return name
        return f"sandbox_{secrets.token_hex(4)}"

    def update(self, container: Container, **changes: Any) -> Container:
        updated = dataclasses.replace(container, **changes)
        if self.dir(container.id).is_dir():
            self._write(updated)
        return updated

    def _write(self, container: Container) -> None:
        path = self.dir(container.id)
        tmp = path / f".{RECORD}.{os.getpid()}.tmp"
        data = json.dumps(dataclasses.asdict(container), indent=2).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path / RECORD)

    def _read(self, path: Path) -> Container | None:
        try:
            raw = json.loads((path / RECORD).read_text())
            raw["command"] = tuple(raw.get("command", ()))
            known = {f.name for f in dataclasses.fields(Container)}
            container = Container(**{k: v for k, v in raw.items() if k in known})
        except (OSError, ValueError, TypeError):
            return None  # being created or removed right now, or damaged: not listed
        if container.status == "running" and not is_alive(container):
            container = dataclasses.replace(container, status="exited")
        return container

    def _load_all(self) -> list[Container]:
        if not self.root.is_dir():
            return []
        found = []
        for entry in self.root.iterdir():
            if entry.name.startswith("."):
                continue
            container = self._read(entry)
            if container is not None:
                found.append(container)
        return found

    def list(self) -> list[Container]:
        return sorted(self._load_all(), key=lambda c: c.created, reverse=True)

    def lookup(self, name_or_id: str) -> Container:
        containers = self._load_all()
        for c in containers:
            if c.name == name_or_id or c.id == name_or_id:
                return c
        if len(name_or_id) >= 3 and all(ch in "0123456789abcdef" for ch in name_or_id):
            matches = [c for c in containers if c.id.startswith(name_or_id)]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise ContainerError(
                    f"{name_or_id} matches several containers",
                    context=", ".join(c.short_id for c in matches),
                    hint="give more digits of the id, or the name",
                )
        raise ContainerNotFound(
            f"no container with name or id {name_or_id!r}", hint="'sandbox ps -a' lists containers"
        )

    def forget(self, container: Container) -> None:
        """Drop the record (the caller has removed or is removing the files)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.dir(container.id) / RECORD)

    def check_removable(self, container: Container, force: bool) -> None:
        if container.status == "running" and not force:
            raise ContainerError(
                f"container {container.name} is running",
                hint=f"stop it first, or use 'sandbox rm -f {container.name}'",
            )
