"""Container lifecycle as seen from the caller: create, run to completion, remove.

`run` is the parent side of the protocol documented in runtime/init.py: it validates the
whole spec before any process exists, creates the container's directories, spawns the
namespaced init, forwards signals, relays the terminal, and turns the end of PID 1 into an
exit code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sandbox import spec as specs
from sandbox.config import Settings, runtime_root
from sandbox.errors import (
    ContainerError,
    ExitCode,
    ImageNotFound,
    SandboxError,
    UsageError,
    exit_code_for_wait_status,
)
from sandbox.rootless import cgroups, idmap, syscalls, userns
from sandbox.rootless.channel import Channel, ChannelClosed
from sandbox.rootless.idmap import IdMapping
from sandbox.rootless.userns import wait_pid
from sandbox.runtime import hostroot, init, names, network, parent, state
from sandbox.runtime.state import Container, ContainerStore

if TYPE_CHECKING:  # named networks and pods load runtime/networks.py when a run uses them
    from sandbox.runtime import networks

Warn = Callable[[str], None]


def _stderr_warn(message: str) -> None:
    print(f"Warning: {message}", file=sys.stderr)


def mapping_for(settings: Settings, requested: str | None, warn: Warn) -> IdMapping:
    mapping = idmap.for_current_user(requested or settings.userns)
    if mapping.single_reason and (requested or settings.userns) != "single":
        warn(f"using a single-id mapping: {mapping.single_reason}")
    return mapping


def storage_driver(settings: Settings) -> str:
    if settings.storage_driver != "auto":
        return settings.storage_driver
    from sandbox.rootless import features

    if features.probe("overlay_userns").ok:
        return "overlay"
    # Without kernel overlay in a user namespace: fuse-overlayfs where it can run, else a copy.
    usable = features.probe("fuse-overlayfs").ok and features.probe("fuse").ok
    return "fuse-overlay" if usable else "vfs"


def create(
    settings: Settings, options: specs.RunOptions, *, warn: Warn = _stderr_warn
) -> tuple[specs.ContainerSpec, Container]:
    """`sandbox create`: validate everything, then reserve the name and write the container's
    directory, its /etc files and its spec. Nothing is created when validation fails."""
    if options.bundle is not None:  # an OCI bundle runs as it stands (sandbox/oci/bundle.py)
        from sandbox.oci import bundle

        return bundle.create(settings, options, warn)
    if options.userns is None and settings.userns == "keep-id":
        options = dataclasses.replace(options, userns="keep-id")
    # The storage's mapping (layers are unpacked with it); keep-id reorders it for the container.
    mapping = mapping_for(settings, options.userns, warn)
    ctr_mapping = idmap.keep_id(mapping) if options.userns == "keep-id" else mapping
    store = ContainerStore(settings.containers_root)
    if options.name is not None:
        specs.validate_name(options.name)
    image_config: dict[str, object] = {}
    image_id = None
    lowers: tuple[Path, ...] = ()
    host_root = options.image == hostroot.IMAGE and not options.rootfs
    if host_root:
        pass  # the host's own /usr and /etc: no image, no store (runtime/hostroot.py)
    elif options.rootfs:
        rootfs = Path(os.path.abspath(options.image))
        if not rootfs.is_dir():
            raise UsageError(
                f"--rootfs {options.image} is not a directory",
                hint="give the path of an unpacked root filesystem",
            )
    else:
        from sandbox.images.store import ImageStore

        images = ImageStore(settings.storage_root, mapping)
        image = None
        if options.pull in ("missing", "never"):  # in the index: the pull modules stay unloaded
            with contextlib.suppress(ImageNotFound):
                image = images.lookup(options.image)
        if image is None:
            from sandbox.images import pull

            # Before anything forks: a pull's download threads are joined inside ensure_image.
            image = pull.ensure_image(
                settings,
                mapping,
                options.image,
                policy=options.pull,
                tls_verify=options.tls_verify,
                platform=options.platform,
            )
        image_config, image_id = dict(image.config), image.id
        lowers = tuple(images.layer_paths(image))
    manager, enforced = cgroup_manager(settings, options, store, warn)
    container_id = store.new_id()
    # A generated name is checked (and re-drawn if taken) under the store's lock in create().
    name = options.name or names.generate()
    cdir = store.dir(container_id)
    if host_root:
        root = specs.Root("host", cdir / "rootfs")
    elif options.rootfs:
        root = specs.Root("dir", rootfs)
    else:
        driver = storage_driver(settings)
        if driver in ("overlay", "fuse-overlay"):
            root = specs.Root(driver, cdir / "merged", lowers, cdir / "upper", cdir / "work")
        else:
            root = specs.Root("vfs", cdir / "rootfs", lowers)
        root = _shifted(root, mapping, ctr_mapping, cdir)
    volumes_root = None
    if options.volumes:  # -v NAME:PATH; sandbox/volumes.py is loaded only for a run with -v
        from sandbox import volumes

        volumes_root = volumes.root(settings.data_root)
    spec = specs.build(
        options,
        container_id=container_id,
        name=name,
        image_config=image_config,
        image_id=image_id,
        root=root,
        mapping=ctr_mapping,
        etc_dir=cdir / "etc",
        cgroup_mount=manager.name != "disabled",
        volumes_root=volumes_root,
    )
    if spec.network.mode == "bridge":  # --network NAME: it must exist; its subnet is recorded
        from sandbox.runtime import networks

        spec = dataclasses.replace(spec, network=networks.resolve(settings.data_root, spec.network))
    if volumes_root is not None:  # named volumes are made on first use, once the spec is valid
        from sandbox import volumes

        for mount in spec.mounts:
            if mount.type == "bind" and Path(mount.source).parent.parent == volumes_root:
                volumes.create(settings.data_root, Path(mount.source).parent.name)
    record = store.create(
        Container(
            id=container_id,
            name=name,
            image=options.image,
            image_id=image_id,
            command=spec.process.args,
            created=state.now(),
            remove=options.remove,
            rootfs_kind=root.kind,
            cgroup_manager=manager.name,
            limits=tuple(
                {"option": x.option, "file": x.file, "value": x.value, "enforced": enforced}
                for x in options.resources.limits()
            ),
        ),
        generated_name=options.name is None,
    )
    if record.name != spec.name:
        spec = dataclasses.replace(spec, name=record.name)
    try:
        _prepare_dirs(spec)
        store.save_spec(spec, durable=not options.remove)
    except BaseException as e:
        remove_files(store, record, mapping)
        from sandbox.rootless import filesystems  # only on an error path

        if filesystems.is_full(e):
            raise state.full_disk_error(e, store.dir(record.id)) from e
        raise
    return spec, record


def _shifted(root: specs.Root, storage: IdMapping, container: IdMapping, cdir: Path) -> specs.Root:
    """A container whose mapping is not the store's (keep-id) sees the layers through
    fuse-overlayfs with their true owners (rootless/fuse_overlay.py); checked here, before
    anything exists, so a missing fuse-overlayfs is one error, not wrong owners."""
    if storage.uids == container.uids and storage.gids == container.gids:
        return root
    from sandbox.rootless import fuse_overlay

    fuse_overlay.program()
    uids = fuse_overlay.shift(storage.uids, container.uids)
    gids = fuse_overlay.shift(storage.gids, container.gids)
    fuse_overlay.arguments(root.lowers, uids, gids, upper=root.upper, work=root.work)  # paths ok
    shifted = None if root.kind == "fuse-overlay" else cdir / "lower"
    return dataclasses.replace(root, shifted=shifted, uid_shift=uids, gid_shift=gids)


def cgroup_manager(
    settings: Settings, options: specs.RunOptions, store: ContainerStore, warn: Warn
) -> tuple[cgroups.Manager, bool]:
    """The cgroup manager for a new container, and whether its limits will be enforced.

    Limits that cannot be enforced fail here, before anything exists (unless cgroups are
    disabled: then one warning). Cgroups that crashed runs left behind are removed here.
    """
    mode = options.cgroups or settings.cgroups
    if mode not in cgroups.MODES:
        raise UsageError(f"invalid --cgroups {mode!r}", hint="use enabled or disabled")
    manager = cgroups.select(mode, settings.cgroup_manager)
    enforced = cgroups.check(manager, options.resources, warn)
    if manager.name != "disabled":
        live = [c.id for c in store.list() if c.status == "running"]
        with contextlib.suppress(SandboxError):
            manager.cleanup(live)
    return manager, enforced


def run(
    settings: Settings,
    options: specs.RunOptions,
    *,
    warn: Warn = _stderr_warn,
    on_started: Callable[[Container], None] | None = None,
    exiting: bool = False,
) -> int:
    """`sandbox run` in the foreground: create, start, wait, and exit with the command.
    on_started is called once the command runs (--print-isolation). exiting: the caller
    exits once this returns (the CLI), so a network helper is not waited for (see finish)."""
    spec, record = create(settings, options, warn=warn)
    store = ContainerStore(settings.containers_root)
    try:
        return start_and_wait(
            spec,
            store,
            record,
            on_started=on_started,
            exiting=exiting,
            removing=options.remove,
        )
    finally:
        if options.remove:
            remove_files(store, record, spec.mapping)


def _prepare_dirs(spec: specs.ContainerSpec) -> None:
    root = spec.root
    for path in (root.upper, root.work, root.shifted):
        if path is not None:
            path.mkdir(mode=0o755)
    if root.kind in ("overlay", "host", "fuse-overlay"):
        root.path.mkdir(mode=0o755)
    if not spec.etc_files:  # an OCI bundle brings its own /etc
        return
    etc = spec.etc_files[0][1].parent
    etc.mkdir(mode=0o755)
    files = {
        "hostname": f"{spec.hostname}\n",
        "hosts": network.hosts_file(spec.network, spec.hostname, spec.name),
        "resolv.conf": network.resolv_conf(spec.network),
    }
    for name, text in files.items():
        (etc / name).write_text(text)
    if any(destination == "/etc/passwd" for destination, _ in spec.etc_files):
        from sandbox.runtime import keepid

        # The image's files as the container will see them: the top-most layer first.
        layers = [Path("/")] if root.kind == "host" else [*reversed(root.lowers)]
        if root.kind == "dir":
            layers = [root.path]
        keepid.write(etc, layers, keepid.host_identity())


@dataclasses.dataclass
class Started:
    """A container whose command runs: what its parent holds until PID 1 has exited.

    The detached monitor hands this over to its native half and back (runtime/monitor.py).
    """

    record: Container
    pid1: int
    master: int | None  # the pty master (with a terminal)
    helper: network.Helper | None
    attachment: networks.Attachment | None
    cgroup: Path | None


def start_and_wait(
    spec: specs.ContainerSpec,
    store: ContainerStore,
    record: Container,
    *,
    pump: parent.Pump = parent.relay_terminal,
    on_started: Callable[[Container], None] | None = None,
    exiting: bool = False,
    removing: bool = False,
) -> int:
    """Start the container, relay its terminal, wait for PID 1; its exit code. exiting and
    removing: see finish."""
    forwarder = parent.SignalForwarder()
    with forwarder.installed():
        started = start(spec, store, record, forwarder)
        forwarder.arm(started.pid1)
        if on_started is not None:
            on_started(started.record)
        pump(spec, started.master)
        if started.master is not None:
            os.close(started.master)
            started.master = None
        status = wait_pid(started.pid1)
        return finish(store, started, status, exiting=exiting, removing=removing)


def start(
    spec: specs.ContainerSpec,
    store: ContainerStore,
    record: Container,
    forwarder: parent.SignalForwarder,
) -> Started:
    """Start the container's command (the caller has installed forwarder). On failure the
    exit is recorded, everything started is undone, and the error raised."""
    # PID 1 is a grandchild: as a subreaper we inherit it when the intermediate exits, so
    # we can wait for it and read its real exit status.
    syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
    # A published port in use fails now, before any process exists.
    network.check_ports_free(spec.network.ports)
    pid1: int | None = None
    master: int | None = None
    helper: network.Helper | None = None
    attachment: networks.Attachment | None = None
    cgroup: Path | None = None
    try:
        if spec.network.named:  # spawned under the rootless netns holder's user namespace
            from sandbox.runtime import networks

            attachment = networks.prepare(spec, store, runtime_root())
        early = init.early_namespaces(spec)  # created while the mapping is written
        intermediate, channel = userns.spawn(
            spec.mapping,
            lambda ch: init.intermediate(spec, ch, unshared=early),
            within=attachment.within if attachment is not None else None,
            meanwhile=early,
        )
        try:
            # Step 2b: into its cgroup before it can fork PID 1, so nothing escapes.
            record, cgroup = _join_cgroup(spec, store, record, intermediate)
            channel.send("cgroup")
            message, _ = channel.expect("pid1")
            pid1 = int(message["pid"])
            wait_pid(intermediate)
            # PID 1 mounts its root while the record is written (~1.5 ms off the start).
            channel.send("reparented")
            record = store.update(
                record,
                status="running",
                pid=pid1,
                pid_start=state.process_start_time(pid1) or 0,
                boot_id=state.boot_id(),
                started_at=state.now(),
                # Whoever records the exit: this process (`run`, or a detached monitor).
                monitor_pid=os.getpid(),
                ports=tuple(map(str, spec.network.ports)),
            )
            # Step 9: PID 1's namespaces exist; the helper joins them while PID 1 mounts its
            # root (steps 5-8; slirp4netns takes ~3 ms to start). Nothing in them needs the
            # other: the helper works on the network namespace, PID 1 on the mount one.
            try:
                helper = network.start(spec.network, pid1, store.dir(spec.id), runtime_root())
                if attachment is not None:  # eth0 on the network's bridge, ports, peers' hosts
                    networks.connect(attachment, runtime_root(), pid1)
            except Exception as error:
                # PID 1 failing meanwhile (an unknown --user) takes its namespaces with it,
                # and the helper fails for that: PID 1's own error is the one that explains.
                reported = _reported(channel)
                if reported is None:
                    raise
                raise reported from error
            if spec.process.terminal:
                master = parent.receive_pty(channel, forwarder)
            channel.expect("ready")
            channel.send("start")
            parent.wait_for_exec(channel)
        finally:
            channel.close()
    except BaseException as error:
        if pid1 is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid1, signal.SIGKILL)
            wait_pid(pid1)
        if helper is not None:
            helper.stop()
        if attachment is not None:
            networks.detach(attachment, runtime_root())
        if master is not None:
            os.close(master)
        _release_cgroup(record)
        code = error.exit_code if isinstance(error, SandboxError) else ExitCode.ENGINE
        store.update(record, status="exited", exit_code=code, finished_at=state.now())
        raise
    assert pid1 is not None  # set before "start" is sent
    return Started(record, pid1, master, helper, attachment, cgroup)


def _reported(channel: Channel) -> SandboxError | None:
    """The error PID 1 has already sent, if any (without waiting for one)."""
    import select

    if not select.select([channel.fileno()], [], [], 0)[0]:
        return None
    try:
        _, fds = channel.recv()
    except SandboxError as error:
        return error
    except ChannelClosed:
        return None
    for fd in fds:
        os.close(fd)
    return None


def finish(
    store: ContainerStore,
    started: Started,
    status: int,
    *,
    exiting: bool = False,
    removing: bool = False,
) -> int:
    """PID 1 has exited with wait status `status` (and was reaped): stop the network helper,
    leave the named network, read OOM, release the cgroup, record the exit; the exit code.

    exiting: the caller exits right after, so a helper that publishes no ports is told to
    quit and not waited for (its exit takes ~20 ms of tap device teardown in the kernel;
    init reaps it). One with ports is waited for: the next command may want those ports.
    removing: the caller deletes the container right after, so the exit is not recorded.
    """
    if started.helper is not None:
        started.helper.stop(wait=not exiting or bool(started.record.ports))
    if started.attachment is not None:
        from sandbox.runtime import networks

        networks.detach(started.attachment, runtime_root())
    code = exit_code_for_wait_status(status)
    # Read before the cgroup is released: a systemd scope vanishes once it is empty.
    oom = started.cgroup is not None and cgroups.oom_killed(started.cgroup)
    record = started.record
    _release_cgroup(record)
    if not removing:
        try:
            store.update(
                record, status="exited", exit_code=code, finished_at=state.now(), oom_killed=oom
            )
        except ContainerError as e:  # a full disk: the command's own status still counts
            _stderr_warn(f"the exit of container {record.name} was not recorded: {e}")
    return code


def _join_cgroup(
    spec: specs.ContainerSpec, store: ContainerStore, record: Container, intermediate: int
) -> tuple[Container, Path | None]:
    """Put the (waiting) intermediate into the container's cgroup, with the limits written."""
    if record.cgroup_manager == "disabled":
        return record, None
    manager = cgroups.by_name(record.cgroup_manager)
    try:
        path = manager.enter(spec.id, intermediate, spec.resources)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.kill(intermediate, signal.SIGKILL)
        wait_pid(intermediate)
        raise
    _managers[spec.id] = manager
    return store.update(record, cgroup_path=str(path)), path


# The managers of the containers this process runs: the systemd one holds the scope open.
_managers: dict[str, cgroups.Manager] = {}


def _release_cgroup(record: Container) -> None:
    manager = _managers.pop(record.id, None)
    if manager is not None:
        with contextlib.suppress(SandboxError):
            manager.release(record.id)


def remove_files(store: ContainerStore, container: Container, mapping: IdMapping) -> None:
    """Delete a container's directory. Files that belong to subordinate ids are deleted from
    inside a user namespace with the same mapping. The directory is held meanwhile, so a
    listing does not take it for a damaged one (state.ContainerStore.removing)."""
    with store.removing(container):
        _remove_files(store, container, mapping)


def _remove_files(store: ContainerStore, container: Container, mapping: IdMapping) -> None:
    if container.cgroup_manager != "disabled":
        # The record may predate the cgroup's path; the manager finds it by the id. A cgroup
        # still busy (a killed process not yet gone) is removed by the next command's cleanup.
        with contextlib.suppress(SandboxError):
            manager = cgroups.by_name(container.cgroup_manager, container.cgroup_path)
            manager.remove(container.id)
    path = store.dir(container.id)
    store.forget(container)
    if not path.exists():
        return

    def gone_already(_function: object, _path: str, info: object) -> None:
        # A file its monitor removed meanwhile (the attach socket) is fine.
        error = info[1] if isinstance(info, tuple) else info
        if not isinstance(error, FileNotFoundError):
            raise error  # type: ignore[misc]

    try:
        # Most containers only wrote files of their root, which is us on the host: then a
        # plain removal works and saves a user namespace and two newuidmap runs per --rm.
        state.remove_tree(path)
        return
    except OSError:
        pass  # files of subordinate ids (or a sticky directory): remove the rest as them

    def rmtree(_channel: Channel) -> int:
        shutil.rmtree(path, onerror=gone_already)
        return 0

    try:
        userns.run(mapping, rmtree)
    except SandboxError as error:
        raise ContainerError(
            f"cannot remove the files of container {container.name}",
            context=error.message,
            hint=f"'sandbox unshare rm -rf {path}' removes them",
        ) from error


def dependents(store: ContainerStore, container: Container) -> list[Container]:
    """The containers, in any state, that join this one's network namespace
    (--network container:NAME, as a pod's containers join its infra container)."""

    def joins(config: network.NetworkConfig) -> bool:
        target = config.name
        return config.mode == "container" and (
            target == container.name or (len(target) >= 3 and container.id.startswith(target))
        )

    return [
        other
        for other, spec in store.with_specs()
        if other.id != container.id and joins(spec.network)
    ]


def remove(
    settings: Settings,
    name_or_id: str,
    *,
    force: bool = False,
    depend: bool = False,
    warn: Warn = _stderr_warn,
) -> Container:
    """`sandbox rm`: stop (with force) and delete one container. One whose network namespace
    others join is refused (they would be left without a network, or unable to start), unless
    depend: then they are removed first."""
    store = ContainerStore(settings.containers_root)
    container = store.lookup(name_or_id, damaged=True)
    users = dependents(store, container) if container.status != "unknown" else []
    if users and not depend:
        raise ContainerError(
            f"container {container.name} has containers that join its network: "
            + ", ".join(c.name for c in users),
            hint=f"remove them first, or 'sandbox rm --depend {container.name}' removes them too",
        )
    store.check_removable(container, force)
    for user in users:
        remove(settings, user.id, force=force, depend=True, warn=warn)
    if container.status == "running" and state.is_alive(container):
        (store.dir(container.id) / "stopped").touch()  # no restart by its policy
        with contextlib.suppress(ProcessLookupError):
            os.kill(container.pid, signal.SIGKILL)
        # Let its monitor record the end and let go of its files before they are deleted.
        from sandbox.runtime import lifecycle

        lifecycle.wait_recorded(store, container, timeout=10)
    remove_files(store, container, mapping_for(settings, None, warn))
    return container


def release_image(
    settings: Settings, image_id: str, *, force: bool, warn: Warn = _stderr_warn
) -> None:
    """Before an image is deleted: refuse while containers use it, or with force remove them."""
    store = ContainerStore(settings.containers_root)
    users = [c for c in store.list() if c.image_id == image_id]
    if not users:
        return
    if not force:
        names = ", ".join(c.name for c in users)
        raise ContainerError(
            f"image {image_id[:12]} is in use by container(s) {names}",
            hint=f"remove them first ('sandbox rm {users[0].name}'), or use "
            "'sandbox rmi -f' to remove them too",
        )
    for c in users:
        remove(settings, c.id, force=True, warn=warn)
