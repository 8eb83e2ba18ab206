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
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

from sandbox import codec
from sandbox.errors import ContainerError, ContainerNotFound, UsageError

if TYPE_CHECKING:
    from sandbox.spec import ContainerSpec

RECORD = "container.json"
SPEC = "spec.json"


@dataclasses.dataclass(frozen=True)
class Container:
    """A container's record (container.json): what it runs and its last known state."""

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
    oom_killed: bool = False  # the OOM killer killed a process (the cgroup's memory.events)
    cgroup_manager: str = "disabled"  # systemd | cgroupfs | disabled (rootless/cgroups)
    cgroup_path: str = ""  # the container's cgroup under /sys/fs/cgroup, "" without one
    # Per limit: {"option", "file", "value", "enforced"}; `sandbox inspect` shows them.
    limits: tuple[dict[str, object], ...] = ()
    monitor_pid: int = 0  # the process that records the exit: `run`, or a detached monitor
    restart_count: int = 0
    ports: tuple[str, ...] = ()  # published ports, "80/tcp -> 127.0.0.1:8080" (sandbox port)

    @property
    def short_id(self) -> str:
        return self.id[:12]


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")


_BOOT_ID: list[str] = []


def boot_id() -> str:
    """This boot's id, read once per process (every running record is checked against it)."""
    if not _BOOT_ID:
        try:
            _BOOT_ID.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
        except OSError:
            return ""
    return _BOOT_ID[0]


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


def abandoned(c: Container) -> bool:
    """A --rm container that nobody will remove: its command is gone and so is the process
    that was to record the exit and remove it (a `sandbox run --rm` killed by SIGKILL, or a
    killed monitor; PID 1 died with it through PDEATHSIG)."""
    if not c.remove or c.status != "exited" or c.finished_at is not None:
        return False  # not --rm, still running, or its exit was recorded (removal under way)
    return c.monitor_pid <= 0 or not pid_exists(c.monitor_pid)


def pid_exists(pid: int) -> bool:
    """Whether a process has this pid (another user's counts: maybe a reused pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
        return os.urandom(32).hex()

    def create(self, container: Container, *, generated_name: bool = False) -> Container:
        """Reserve the name and write the record; the name must be unique.

        A generated name that another container took meanwhile is replaced by a fresh one
        (under the lock), so concurrent runs without --name never collide.
        """
        with self.lock():
            taken = {other.name: other for other in self._load_all()}
            if generated_name and container.name in taken:
                container = dataclasses.replace(container, name=self._fresh_name(set(taken)))
            other = taken.get(container.name)
            if other is not None:
                raise UsageError(
                    f"the container name {container.name!r} is already in use by {other.short_id}",
                    hint=f"remove it with 'sandbox rm {container.name}' or choose another --name",
                )
            # Made under a dot name and renamed once the record is in it: a directory named
            # by an id always has had a record (listed as "unknown" when it is damaged).
            path = self.dir(container.id)
            new = self.root / f".new-{container.id}"
            for entry in os.scandir(self.root):  # what a create killed here left behind
                if entry.name.startswith(".new-"):
                    shutil.rmtree(entry.path, ignore_errors=True)
            try:
                new.mkdir(mode=0o700)
                data = json.dumps(dataclasses.asdict(container), indent=2).encode()
                _write_atomic(new / RECORD, data, durable=True)
                os.rename(new, path)
            except BaseException as e:
                with contextlib.suppress(OSError):
                    shutil.rmtree(new)
                if _is_full(e):
                    raise full_disk_error(e, self.root) from e
                raise
        return container

    @staticmethod
    def _fresh_name(taken: set[str]) -> str:
        from sandbox.runtime.names import generate

        for _ in range(100):
            name = generate()
            if name not in taken:
                return name
        return f"sandbox_{os.urandom(4).hex()}"

    def update(self, container: Container, **changes: Any) -> Container:
        """Change fields of the stored record (read-modify-write under the lock, so the
        monitor and a command such as rename never undo each other's changes)."""
        with self.lock():
            current = self._read(self.dir(container.id))
            if current is None:
                # Removed meanwhile (or damaged): never bring a forgotten record back.
                return dataclasses.replace(container, **changes)
            updated = dataclasses.replace(current, **changes)
            self._write(updated, durable=not updated.remove)
        return updated

    def rename(self, container: Container, new_name: str) -> Container:
        with self.lock():
            for other in self._load_all():
                if other.name == new_name and other.id != container.id:
                    raise UsageError(
                        f"the container name {new_name!r} is already in use by {other.short_id}"
                    )
            current = self._read(self.dir(container.id)) or container
            updated = dataclasses.replace(current, name=new_name)
            self._write(updated, durable=True)
        return updated

    def save_spec(self, spec: ContainerSpec, *, durable: bool = True) -> None:
        """The container's full specification, so start, exec and inspect can use it later
        (durable=False for a --rm container: see _write_atomic)."""
        data = json.dumps(codec.to_json(spec), indent=2).encode()
        _write_atomic(self.dir(spec.id) / SPEC, data, durable=durable)

    def load_spec(self, container_id: str) -> ContainerSpec:
        from sandbox.spec import ContainerSpec

        try:
            data = json.loads((self.dir(container_id) / SPEC).read_text())
            return codec.from_json(ContainerSpec, data)
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise ContainerError(
                f"cannot read the specification of container {container_id[:12]}", context=str(e)
            ) from e

    def _write(self, container: Container, *, durable: bool) -> None:
        data = json.dumps(dataclasses.asdict(container), indent=2).encode()
        _write_atomic(self.dir(container.id) / RECORD, data, durable=durable)

    def _read(self, path: Path, *, damaged: bool = False) -> Container | None:
        """The record in path; None when there is none or it cannot be read (damaged=True:
        a stand-in with status "unknown" for a directory whose record is damaged or missing,
        so that ps lists it and rm removes it, unless it is being removed right now)."""
        try:
            container = codec.from_json(Container, json.loads((path / RECORD).read_text()))
        except (OSError, ValueError, TypeError, KeyError) as e:
            if not damaged or isinstance(e, NotADirectoryError):
                return None
            return _unknown(path)
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
            container = self._read(entry, damaged=True)
            if container is not None:
                found.append(container)
        return found

    def list(self) -> list[Container]:
        return sorted(self._load_all(), key=lambda c: c.created, reverse=True)

    def with_specs(self) -> Iterator[tuple[Container, ContainerSpec]]:
        """Each container of list() with its stored spec; one whose spec cannot be read (being
        created or removed right now, or damaged) is left out."""
        for container in self.list():
            try:
                yield container, self.load_spec(container.id)
            except ContainerError:
                continue

    def lookup(self, name_or_id: str, *, damaged: bool = False) -> Container:
        """The container name_or_id names (a name, an id or a unique id prefix). One whose
        record is damaged (status "unknown") is an error unless damaged=True (rm)."""
        found = self._lookup(name_or_id)
        if found.status == "unknown" and not damaged:
            raise ContainerError(
                f"the record of container {found.short_id} is damaged or missing",
                context=str(self.dir(found.id) / RECORD),
                hint=f"'sandbox rm {found.short_id}' removes the container",
            )
        return found

    def _lookup(self, name_or_id: str) -> Container:
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

    def lookup_running(self, name_or_id: str) -> Container:
        """The container, which must be running (exec, attach, kill, top...)."""
        c = self.lookup(name_or_id)
        if c.status != "running":
            raise ContainerError(
                f"container {c.name} is not running",
                hint=f"start it with 'sandbox start {c.name}'",
            )
        return c

    @contextlib.contextmanager
    def removing(self, container: Container) -> Iterator[None]:
        """Hold an flock on the container's directory while it is deleted, so a listing
        meanwhile does not show it as damaged once its record is gone (see _unknown)."""
        try:
            fd = os.open(self.dir(container.id), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            yield  # gone already, or not a directory: nothing to hold
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def forget(self, container: Container) -> None:
        """Drop the record (the caller has removed or is removing the files); under the lock,
        so no update() is halfway through rewriting it."""
        with self.lock(), contextlib.suppress(FileNotFoundError):
            os.unlink(self.dir(container.id) / RECORD)

    def check_removable(self, container: Container, force: bool) -> None:
        if container.status == "running" and not force:
            raise ContainerError(
                f"container {container.name} is running",
                hint=f"stop it first, or use 'sandbox rm -f {container.name}'",
            )


def _unknown(path: Path) -> Container | None:
    """A stand-in for a container directory whose record is damaged (a power loss tore a
    record that was not fsync'ed) or missing (a killed rm): status "unknown", its id, the
    directory's time. None while another process removes it (it holds an flock on it), or
    when it is gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        created = datetime.datetime.fromtimestamp(os.fstat(fd).st_mtime, datetime.UTC)
    except OSError:  # BlockingIOError: being removed
        return None
    finally:
        os.close(fd)
    return Container(
        id=path.name,
        name="",
        image="",
        image_id=None,
        command=(),
        created=created.isoformat(timespec="microseconds"),
        status="unknown",
        rootfs_kind="unknown",
    )


def _is_full(error: BaseException) -> TypeGuard[OSError]:
    from sandbox.rootless import filesystems  # only on an error path

    return filesystems.is_full(error)


def full_disk_error(error: OSError, path: Path) -> ContainerError:
    """The error for a full disk (or quota) under the container store: it names the device."""
    from sandbox.rootless import filesystems

    return ContainerError(
        filesystems.full_message(error, path),
        context=f"while writing {error.filename or path}",
        hint="free some space there (sandbox rm, sandbox rmi, sandbox image prune)",
    )


def remove_tree(path: Path) -> None:
    """Delete path and everything under it as far as the caller's own uid can: directories of
    ours that deny us (overlayfs makes its work/work mode 000) are opened up first. Raises
    OSError for what belongs to another id (a subordinate one): the caller removes the rest
    from inside the user namespace."""
    uid = os.getuid()

    def own_dir(name: str) -> bool:
        info = os.lstat(name)
        return info.st_uid == uid and stat.S_ISDIR(info.st_mode)

    def retry(_function: object, name: str, info: Any) -> None:
        error: BaseException = info[1] if isinstance(info, tuple) else info
        if isinstance(error, FileNotFoundError):
            return  # removed meanwhile (a monitor's attach socket), or by the retry below
        if not isinstance(error, PermissionError):
            raise error
        # The container is gone, so nothing swaps these for symlinks under us; lstat decides.
        opened = False
        for directory in (name, os.path.dirname(name)):
            if own_dir(directory) and stat.S_IMODE(os.lstat(directory).st_mode) & 0o700 != 0o700:
                os.chmod(directory, 0o700)
                opened = True
        if not opened:
            raise error
        if own_dir(name):
            shutil.rmtree(name, onerror=retry)
        else:
            os.unlink(name)

    shutil.rmtree(path, onerror=retry)


def _write_atomic(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write-temp, fsync, rename: a reader sees the old file or the new one, never half,
    and after a crash the new one or the old one, never an empty one.

    durable=False leaves it out (1 to 30 ms each on a busy disk, four per run) for the
    files of a --rm container after its first record: they describe a run that a crash ends
    anyway, and the run deletes them when it ends. The first record is always synced, so
    after a crash the container is still listed and `sandbox rm` finds it; a later record
    replaces it by rename, which ext4 (auto_da_alloc) and btrfs order after the new data."""
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError as e:
        # A full disk leaves the old file in place, and no temporary file beside it.
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if _is_full(e):
            e.filename = e.filename or str(path)
            raise full_disk_error(e, path.parent) from e
        raise
