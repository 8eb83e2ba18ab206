"""Developer scratch environments: persistent containers you enter, stop, snapshot and roll back.

`sandbox dev NAME` is the container dev-NAME: created on first use (from sandbox.yaml's image,
env, volumes and caches, or --image), kept running with a sleep under the --init reaper, and
entered with an exec'd shell or command. Its root is an overlay, so everything you change is in
its upper directory; a snapshot is a copy of that directory (made inside the user namespace,
so owners, modes, whiteouts and overlay xattrs survive) under
$XDG_DATA_HOME/sandbox/dev/NAME/snapshots/TAG, and a rollback puts a copy back while the
environment is stopped. It runs with --userns=keep-id: you are yourself inside (your uid, gid,
name and home, runtime/keepid.py), so files you create in the mounted project are yours on the
host. The home directory (your host home's path) is the named volume dev-NAME-home, which
survives `sandbox dev rm` unless removed with `sandbox volume rm`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import stat
import time
from pathlib import Path

from sandbox.config import Settings
from sandbox.errors import ContainerError, ContainerNotFound, UsageError
from sandbox.project import Project
from sandbox.runtime.state import Container, ContainerStore

PREFIX = "dev-"
# The environment's PID 1: a shell that exits on SIGTERM (`dev stop`). Not --init: its reaper
# is non-dumpable, so `exec` could not open its /proc/PID/ns.
KEEPALIVE = ("/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done")
_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclasses.dataclass(frozen=True)
class Environment:
    name: str
    container: Container

    @property
    def status(self) -> str:
        return self.container.status


def container_name(name: str) -> str:
    return PREFIX + name


def _store(settings: Settings) -> ContainerStore:
    return ContainerStore(settings.containers_root)


def find(settings: Settings, name: str) -> Container | None:
    try:
        return _store(settings).lookup(container_name(name))
    except ContainerNotFound:
        return None


def get(settings: Settings, name: str) -> Container:
    found = find(settings, name)
    if found is None:
        raise UsageError(f"no dev environment {name}", hint=f"create it with 'sandbox dev {name}'")
    return found


def list_environments(settings: Settings) -> list[Environment]:
    return [
        Environment(c.name[len(PREFIX) :], c)
        for c in _store(settings).list()
        if c.name.startswith(PREFIX)
    ]


def ensure_running(
    settings: Settings, name: str, *, image: str | None, project: Project | None
) -> Container:
    """Create dev-NAME on first use, start it when stopped; return it running."""
    from sandbox.runtime import lifecycle

    existing = find(settings, name)
    if existing is not None:
        if existing.status != "running":
            lifecycle.start(settings, existing.id)
        return _store(settings).lookup(existing.id)
    from sandbox.runtime import container as engine
    from sandbox.runtime import monitor
    from sandbox.spec import RunOptions, validate_name

    validate_name(container_name(name))
    if image is None and project is None:
        raise UsageError(
            f"no image for dev environment {name}",
            hint="give --image IMAGE, or run it where a sandbox.yaml names one",
        )
    from sandbox.runtime.keepid import host_identity

    home = host_identity().home
    volumes: tuple[str, ...] = (f"{container_name(name)}-home:{home}",) if home != "/" else ()
    env: tuple[str, ...] = ()
    workdir = None
    if project is not None:
        volumes = project.mounts() + volumes
        volumes += tuple(f"{n}:{p}" for n, p in project.caches)
        env = project.env
        workdir = project.workdir or project.project_mount
    options = RunOptions(
        image=image or (project.image_for(None) if project else ""),
        command=KEEPALIVE,
        name=container_name(name),
        env=env,
        volumes=volumes,
        workdir=workdir,
        network=project.network if project else None,
        detach=True,
        userns="keep-id",
    )
    spec, record = engine.create(settings, options)
    if spec.root.kind != "overlay":
        engine.remove(settings, record.id, force=True)
        raise UsageError(
            "dev environments need the overlay storage driver (snapshots are its layers)",
            hint="run 'sandbox info' to see why overlay is not available here",
        )
    monitor.start(_store(settings), spec, record)
    return _store(settings).lookup(record.id)


def enter(settings: Settings, name: str, command: tuple[str, ...], *, tty: bool) -> int:
    from sandbox.runtime import exec as execs

    record = get(settings, name)
    return execs.run(
        settings,
        record.id,
        execs.ExecOptions(command=command or ("/bin/sh",), interactive=tty, tty=tty),
    )


def stop(settings: Settings, name: str) -> Container:
    from sandbox.runtime import lifecycle

    return lifecycle.stop(settings, get(settings, name).id, timeout=5)


def remove(settings: Settings, name: str) -> None:
    from sandbox.runtime import container as engine

    record = get(settings, name)
    engine.remove(settings, record.id, force=True)
    snapshots = _snapshots_dir(settings, name).parent
    if snapshots.exists():
        _in_userns(settings, lambda: shutil.rmtree(snapshots))


def _snapshots_dir(settings: Settings, name: str) -> Path:
    return settings.data_root / "dev" / name / "snapshots"


def _upper(settings: Settings, record: Container) -> Path:
    spec = _store(settings).load_spec(record.id)
    if spec.root.kind != "overlay" or spec.root.upper is None:
        raise ContainerError(f"dev environment {record.name} has no overlay layer")
    return spec.root.upper


def snapshots(settings: Settings, name: str) -> list[str]:
    get(settings, name)
    base = _snapshots_dir(settings, name)
    return sorted(os.listdir(base)) if base.is_dir() else []


def snapshot(settings: Settings, name: str, tag: str | None = None) -> str:
    """Copy the environment's layer to snapshots/TAG (running or not; stop it first for a
    consistent copy of files being written)."""
    record = get(settings, name)
    tag = tag or time.strftime("%Y%m%d-%H%M%S")
    if not _TAG_RE.match(tag):
        raise UsageError(f"invalid snapshot tag {tag!r}", hint="letters, digits, '_', '.', '-'")
    target = _snapshots_dir(settings, name) / tag
    if target.exists():
        raise UsageError(
            f"snapshot {tag} of {name} exists", hint="choose another tag, or roll back to it"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    upper = _upper(settings, record)
    _in_userns(settings, lambda: copy_layer(upper, target))
    return tag


def rollback(settings: Settings, name: str, tag: str) -> None:
    """Replace the environment's layer by snapshot TAG; the environment must be stopped."""
    record = get(settings, name)
    source = _snapshots_dir(settings, name) / tag
    if not source.is_dir():
        known = ", ".join(snapshots(settings, name)) or "(none)"
        raise UsageError(f"no snapshot {tag} of {name}", hint=f"snapshots: {known}")
    if record.status == "running":
        raise ContainerError(
            f"dev environment {name} is running",
            hint=f"stop it first: 'sandbox dev stop {name}'",
        )
    upper = _upper(settings, record)

    def restore() -> None:
        staging = upper.with_name(upper.name + ".rollback")
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(staging)
        copy_layer(source, staging)
        # Swap in the copy only once it is complete: a failed copy leaves the layer as it was.
        old = upper.with_name(upper.name + ".old")
        os.rename(upper, old)
        os.rename(staging, upper)
        shutil.rmtree(old)

    _in_userns(settings, restore)


def diff(settings: Settings, name: str) -> list[tuple[str, str]]:
    from sandbox.runtime import changes

    return changes.diff(settings, get(settings, name).id)


def copy_layer(source: Path, target: Path) -> None:
    """Copy an overlay layer exactly: owners, modes, times, symlinks, whiteouts (0/0 character
    devices) and xattrs (user.overlay.opaque). Runs as root of the user namespace."""
    _copy_entry(source, target)
    for dirpath, dirnames, filenames in os.walk(source):
        rel = Path(dirpath).relative_to(source)
        for entry in dirnames + filenames:
            src = Path(dirpath) / entry
            dst = target / rel / entry
            _copy_entry(src, dst)
            if entry in dirnames and src.is_symlink():
                dirnames.remove(entry)  # os.walk does not follow it; nothing to descend into
    # Directory times last: creating entries changed them.
    for dirpath, _dirnames, _files in os.walk(source):
        rel = Path(dirpath).relative_to(source)
        st = os.lstat(dirpath)
        os.utime(target / rel, ns=(st.st_atime_ns, st.st_mtime_ns))


def _copy_entry(src: Path, dst: Path) -> None:
    st = os.lstat(src)
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        dst.mkdir()
    elif stat.S_ISLNK(mode):
        os.symlink(os.readlink(src), dst)
    elif stat.S_ISREG(mode):
        shutil.copyfile(src, dst, follow_symlinks=False)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
        os.mknod(dst, mode, st.st_rdev)
    else:
        return  # sockets: not part of a filesystem's content
    for attr in os.listxattr(src, follow_symlinks=False):
        with contextlib.suppress(OSError):
            os.setxattr(
                dst, attr, os.getxattr(src, attr, follow_symlinks=False), follow_symlinks=False
            )
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(mode):
        os.chmod(dst, stat.S_IMODE(mode))
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


def _in_userns(settings: Settings, action: object) -> None:
    """Run action() as root of a user namespace with the containers' mapping."""
    from sandbox.rootless import userns
    from sandbox.rootless.channel import Channel
    from sandbox.runtime.container import mapping_for

    assert callable(action)

    def target(_channel: Channel) -> int:
        action()
        return 0

    userns.run(mapping_for(settings, None, lambda _m: None), target)
