"""The container side of `sandbox run`: namespaces, PID 1, the root filesystem, execve.

Process tree and protocol (P = sandbox, the parent; I = intermediate; 1 = container PID 1;
C = the command when --init makes PID 1 a reaper). Messages go over one SEQPACKET socket that
is close-on-exec, so its EOF tells P the command was exec'd.

  step  who   does                                                   message
  1     I     unshare(CLONE_NEWUSER)                                 I->P unshared
  2     P     newuidmap/newgidmap on I; meanwhile I unshares mount,  P->I mapped
              PID, net, IPC and UTS (early_namespaces)
  2a    I     (keep-id, fuse-overlay root; PID left for step 3) mounts
              /dev/fuse, forks fuse-overlayfs to serve it from a mount
              namespace without the mount (rootless/fuse_overlay.py)
  2b    P     moves I into the container's cgroup, limits written    P->I cgroup
  3     I     unshare(cgroup, time); fork 1                          I->P pid1 {pid}; I exits
  4     P     reaps I; 1 is reparented to P (a child subreaper)      P->1 reparented
  5     1     PDEATHSIG; lo up; mounts: rootfs, /proc, /dev, /sys, volumes
  6     1     (-t) opens a pty in the container's devpts             1->P pty [master fd]
  7     P     sets the pty's window size from its terminal           P->1 pty_ready
  8     1     pivot_root, hostname, resolves the user                1->P ready
  9     P     while 1 runs steps 5-8: network helper (slirp4netns/   P->1 start, once 1 is ready
              pasta joins 1's netns), published ports, egress rules
  10    1/C   rlimits, user, caps, no_new_privs, stdio, closes fds,  EOF, or C->P error {126|127}
              seccomp last, execve
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import struct
import termios  # up front: after pivot_root the container has no Python library
from typing import NoReturn

from sandbox import security
from sandbox.errors import ContainerError, ExecError, ExitCode
from sandbox.rootless import mounts, network, syscalls
from sandbox.rootless.channel import Channel
from sandbox.rootless.mounts import Mount
from sandbox.runtime import users
from sandbox.spec import ContainerSpec

# spec.namespaces names -> CLONE_* flags (the user namespace is step 1, time is added below).
NAMESPACE_FLAGS = {
    "mount": syscalls.CLONE_NEWNS,
    "pid": syscalls.CLONE_NEWPID,
    "net": syscalls.CLONE_NEWNET,
    "ipc": syscalls.CLONE_NEWIPC,
    "uts": syscalls.CLONE_NEWUTS,
    "cgroup": syscalls.CLONE_NEWCGROUP,
}


def namespace_flags(names: tuple[str, ...]) -> int:
    flags = 0
    for name in names:
        flags |= NAMESPACE_FLAGS[name]
    return flags


TIOCSPTLCK = 0x40045431
TIOCGPTN = 0x80045430
TIOCGPTPEER = 0x5441

# Signals the --init reaper passes on to the command.
FORWARDED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
    signal.SIGALRM,
    signal.SIGCONT,
)


def early_namespaces(spec: ContainerSpec) -> int:
    """The namespaces the intermediate creates while the parent writes its mapping (step 2):
    all but the cgroup one, which must wait for step 2b; none when OCI namespace paths are to
    be joined first."""
    if spec.namespace_paths:
        return 0
    flags = namespace_flags(spec.namespaces) & ~syscalls.CLONE_NEWCGROUP
    if spec.root.needs_fuse:
        # The fuse-overlayfs daemon is forked before the PID namespace exists: it must not
        # become the container's PID 1 (rootless/fuse_overlay.py).
        flags &= ~syscalls.CLONE_NEWPID
    return flags


def intermediate(spec: ContainerSpec, channel: Channel, *, unshared: int = 0) -> int:
    """Step 3: runs as root of the new user namespace; creates the rest and forks PID 1.
    unshared: the namespaces it created already (early_namespaces)."""
    if spec.root.needs_fuse:
        from sandbox.rootless import fuse_overlay

        # Mapped, not yet in the container's cgroup nor its PID namespace: the daemon stays
        # outside both. Its mount goes into the container's mount namespace, made here.
        if not unshared & syscalls.CLONE_NEWNS:
            syscalls.unshare(syscalls.CLONE_NEWNS)
            unshared |= syscalls.CLONE_NEWNS
        fuse_overlay.mount_root(spec.root)
    # Step 2b: wait until the parent has put us into the container's cgroup: the cgroup
    # namespace unshared below takes the cgroup we are in as its root (/proc/self/cgroup 0::/).
    channel.expect("cgroup")
    flags = namespace_flags(spec.namespaces) & ~unshared
    # OCI namespaces with a path are joined, before the others are created (as runc does).
    for name, path in spec.namespace_paths:
        join_namespace(name, path)
    try:
        try:
            syscalls.unshare(flags | syscalls.CLONE_NEWTIME)
        except OSError:
            syscalls.unshare(flags)  # kernels before 5.6 have no time namespaces
    except OSError as e:
        raise ContainerError("cannot create the container's namespaces", context=e.strerror) from e
    pid = os.fork()
    if pid == 0:
        pid1(spec, channel)  # never returns
    channel.send("pid1", pid=pid)
    return 0


def join_namespace(name: str, path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise ContainerError(f"cannot open the {name} namespace {path}", context=e.strerror) from e
    try:
        syscalls.setns(fd, NAMESPACE_FLAGS[name])
    except OSError as e:
        raise ContainerError(f"cannot join the {name} namespace {path}", context=e.strerror) from e
    finally:
        os.close(fd)


def pid1(spec: ContainerSpec, channel: Channel) -> NoReturn:
    try:
        # Before pivot_root, while the runtime's state directory is reachable, and before the
        # fds are closed: sandbox-runtime names the FIFO by an fd we inherit (/proc/self/fd/N),
        # since root of the container may not be allowed to search the state directory.
        fifo = None
        if spec.start_fifo is not None:
            fifo = os.open(spec.start_fifo, os.O_PATH | os.O_CLOEXEC)
        keep = {0, 1, 2, channel.fileno(), *range(3, 3 + spec.preserve_fds)}
        _close_fds_except(keep | ({fifo} if fifo is not None else set()))
        channel.expect("reparented")
        if spec.start_fifo is None:
            # Our parent is now sandbox itself: die with it rather than run unsupervised.
            # (sandbox-runtime: `create` exits and PID 1 passes to conmon, a subreaper.)
            syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
        # A session of our own: the caller's terminal signals (^C, ^Z) reach sandbox, which
        # forwards them, not the container's processes directly.
        os.setsid()
        if "net" in spec.namespaces:  # with --network host, lo is the host's
            network.interface_up("lo")
        slave = setup_root(spec, channel)
        user = _resolve_user(spec)
        channel.send("ready")
        channel.expect("start")
        if fifo is not None:
            channel = _wait_start_fifo(fifo, channel)
        if spec.init:
            _reaper(spec, channel, slave, user)
        _exec(spec, channel, slave, user)
    except BaseException as error:
        channel.send_error(error)
        code = getattr(error, "exit_code", ExitCode.ENGINE)
        os._exit(int(code))


class _StderrReport(Channel):
    """After the FIFO wait nobody listens on the channel: failures go to stderr (conmon's log)."""

    def __init__(self) -> None:
        pass

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        pass

    def send_error(self, error: BaseException) -> None:
        with contextlib.suppress(OSError):
            os.write(2, f"sandbox-runtime: {error}\n".encode())


def _wait_start_fifo(fifo: int, channel: Channel) -> Channel:
    """`create` is done once we close the channel; block until `start` opens the FIFO.

    fifo is an O_PATH fd opened before pivot_root; its magic link still reaches the FIFO.
    """
    channel.close()
    # Opening for writing blocks until a reader (`start`) opens it: that is the start signal.
    fd = os.open(mounts.fd_path(fifo), os.O_WRONLY | os.O_CLOEXEC)
    os.close(fifo)
    os.write(fd, b"0")
    os.close(fd)
    return _StderrReport()


def _write_sysctls(spec: ContainerSpec) -> None:
    # Namespaced sysctls follow the namespaces of the process that opens the file (we are in
    # the container's), and the host's /proc cannot be an image's planted symlink.
    for key, value in spec.sysctl:
        if ".." in key.split(".") or "/" in key:
            raise ContainerError(f"invalid sysctl name {key!r} (linux.sysctl)")
        path = os.path.join("/proc/sys", *key.split("."))
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError as e:
            raise ContainerError(
                f"cannot set sysctl {key} (linux.sysctl)",
                context=e.strerror,
                hint="a rootless container can set only namespaced sysctls (net.*, kernel.shm*)",
            ) from e
    if spec.oom_score_adj is not None:
        try:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write(str(spec.oom_score_adj))
        except OSError as e:
            raise ContainerError(
                f"cannot set oom_score_adj to {spec.oom_score_adj} (process.oomScoreAdj)",
                context=e.strerror,
                hint="without privileges it can be raised, not lowered below the current value",
            ) from e


def setup_root(spec: ContainerSpec, channel: Channel) -> int | None:
    """Steps 5-8: the container's filesystem, pty and identity. Returns the pty slave fd."""
    mounts.make_private()
    root = str(spec.root.path)
    _mount_root(spec)
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for mount in spec.mounts:
            _mount_one(root_fd, mount)
        slave = None
        console = None
        if spec.process.terminal:
            slave, console = _open_pty(root_fd, channel)
        mounts.setup_dev(root_fd, console=console)
        for destination, source in spec.etc_files:
            mounts.mount_at(root_fd, Mount(destination, "bind", str(source), ("bind",)))
        # After /proc, /sys and /dev exist (we bind the container's /dev/null over files),
        # and after the volumes, so a volume cannot uncover a masked path.
        if "net" in spec.namespaces:
            # podman's default sysctl: ping without CAP_NET_RAW, for root of the container.
            # Before mask_paths, which makes /proc/sys read-only.
            with (
                contextlib.suppress(OSError),
                open("/proc/sys/net/ipv4/ping_group_range", "w") as f,
            ):
                f.write("0 0")
        _write_sysctls(spec)
        security.mask_paths(root_fd, spec.security)
    finally:
        os.close(root_fd)
    mounts.pivot(root)
    if spec.root.readonly:
        mounts.remount_root_readonly()
    syscalls.sethostname(spec.hostname)
    return slave


def _mount_root(spec: ContainerSpec) -> None:
    root = spec.root
    lowers = root.lowers if root.shifted is None else (root.shifted,)  # keep-id: true owners
    if root.kind == "overlay":
        assert root.upper is not None and root.work is not None
        mounts.mount_overlay(lowers, root.upper, root.work, root.path)
        return
    if root.kind == "fuse-overlay":
        return  # mounted by the intermediate (fuse_overlay.mount_root): already a mount point
    if root.kind == "host":
        from sandbox.runtime import hostroot

        hostroot.mount(root.path)  # a tmpfs: already a mount point for pivot_root
        return
    if root.kind == "vfs":
        from sandbox.images import rootfs

        rootfs.ensure_copy(lowers, root.path)
    # pivot_root needs the new root to be a mount point: bind the directory onto itself.
    syscalls.mount(str(root.path), str(root.path), None, syscalls.MS_BIND | syscalls.MS_REC)


def _mount_one(root_fd: int, mount: Mount) -> None:
    try:
        mounts.mount_at(root_fd, mount)
    except ContainerError as error:
        cause = error.__cause__
        if mount.type == "sysfs" and isinstance(cause, OSError) and cause.errno == errno.EPERM:
            # Without a network namespace of our own (or under a masked /sys) the kernel
            # refuses a fresh sysfs; a read-only bind of the host's is what podman falls to.
            mounts.mount_at(
                root_fd, Mount("/sys", "bind", "/sys", ("rbind", "ro", "nosuid", "noexec", "nodev"))
            )
            return
        if mount.type == "proc" and isinstance(cause, OSError) and cause.errno == errno.EPERM:
            raise ContainerError(
                "cannot mount /proc in the container",
                context=error.context,
                hint="the host's /proc has paths mounted over (are you inside another "
                "container?); run 'sandbox doctor'",
            ) from error
        raise


def _open_pty(root_fd: int, channel: Channel) -> tuple[int, str]:
    """A pty from the container's own devpts, so `tty` inside names /dev/pts/0."""
    ptmx = mounts.open_in_root(root_fd, "/dev/pts/ptmx")
    try:
        master = os.open(mounts.fd_path(ptmx), os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    finally:
        os.close(ptmx)
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
    number = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, b"\0" * 4))[0]
    # TIOCGPTPEER opens the slave through the master: no path lookup in the container.
    slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
    channel.send("pty", fds=[master])
    os.close(master)
    channel.expect("pty_ready")
    slave_node = mounts.open_in_root(root_fd, f"/dev/pts/{number}")
    # Keep the O_PATH fd's magic link alive until setup_dev binds it onto /dev/console.
    return slave, mounts.fd_path(_keep(slave_node))


_kept: list[int] = []


def _keep(fd: int) -> int:
    _kept.append(fd)
    return fd


def _resolve_user(spec: ContainerSpec) -> users.User:
    user = users.resolve(
        spec.process.user, users.read_small("/etc/passwd"), users.read_small("/etc/group")
    )
    if spec.mapping.single and (user.uid != 0 or user.gid != 0):
        raise ContainerError(
            f"user {spec.process.user} is not mapped in this container",
            context="only root is mapped without subordinate ids",
            hint="add subordinate ids to /etc/subuid and /etc/subgid (see 'sandbox doctor')",
        )
    return user


def _reaper(spec: ContainerSpec, channel: Channel, slave: int | None, user: users.User) -> NoReturn:
    """--init: PID 1 forks the command, forwards signals to it and reaps every orphan."""
    child = os.fork()
    if child == 0:
        _exec(spec, channel, slave, user)
    channel.close()
    if slave is not None:
        os.close(slave)
    for fd in _kept:
        os.close(fd)
    # The reaper is our interpreter running inside the container; nobody there may open
    # /proc/1/exe or /proc/1/mem through it.
    syscalls.prctl(syscalls.PR_SET_DUMPABLE, 0)
    # It keeps no more capabilities than the container's processes.
    security.prepare(spec.security)
    security.restrict(spec.security)

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for signum in FORWARDED:
        signal.signal(signum, forward)
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            os._exit(ExitCode.ENGINE)
        if pid == child:
            if os.WIFSIGNALED(status):
                os._exit(ExitCode.SIGNAL_BASE + os.WTERMSIG(status))
            os._exit(os.WEXITSTATUS(status))


def _exec(spec: ContainerSpec, channel: Channel, slave: int | None, user: users.User) -> NoReturn:
    process = spec.process
    if slave is not None:
        if spec.init:
            os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        for fd in (0, 1, 2):
            os.dup2(slave, fd)
        if slave > 2:
            os.close(slave)
    elif not process.interactive:
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
    env = dict(e.partition("=")[::2] for e in process.env)
    env.setdefault("HOME", user.home)
    # Not the caller's umask: the container's files get the same modes whoever starts it.
    os.umask(process.umask)
    try:
        os.chdir(process.cwd)
    except FileNotFoundError:
        os.makedirs(process.cwd, exist_ok=True)
        if process.cwd == user.home:
            os.chown(process.cwd, user.uid, user.gid)  # a missing home is made for its user
        os.chdir(process.cwd)
    # Order matters: rlimits and the bounding set need our capabilities; the user switch
    # keeps them (PR_SET_KEEPCAPS) for capset; seccomp comes last, so none of this setup has
    # to pass the filter.
    security.prepare(spec.security)
    _set_user(spec, user)
    if os.getpid() == 1 and spec.start_fifo is None:
        # The kernel clears PDEATHSIG when the effective ids change (keep-id, --user): set it
        # again, or a killed sandbox would leave the container (and its fuse-overlayfs) running.
        syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
    security.restrict(spec.security)
    _close_fds_except({0, 1, 2, channel.fileno(), *range(3, 3 + spec.preserve_fds)})
    # Python ignores SIGPIPE and SIGXFSZ, and ignored signals survive execve.
    for signum in (signal.SIGPIPE, signal.SIGXFSZ, *FORWARDED):
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    program = process.args[0]
    security.install_seccomp(spec.security)
    failure = exec_failure(program, execvpe(program, list(process.args), env))
    channel.send_error(failure)
    os._exit(failure.exit_code)


def _set_user(spec: ContainerSpec, user: users.User) -> None:
    try:
        if not spec.mapping.single:
            os.setgroups(list(dict.fromkeys(user.groups + spec.additional_gids)))
        os.setresgid(user.gid, user.gid, user.gid)
        os.setresuid(user.uid, user.uid, user.uid)
    except OSError as e:
        raise ContainerError(
            f"cannot switch to user {spec.process.user}",
            context=f"{e.strerror} (uid {user.uid}, gid {user.gid})",
            hint="the id may be outside this user's subordinate range (/etc/subuid, /etc/subgid)",
        ) from e


def execvpe(program: str, args: list[str], env: dict[str, str]) -> OSError:
    """execve with a PATH search in env's PATH, as a shell does; returns the error that counts.

    A candidate that is missing, or behind a directory we cannot search, is skipped (127 if
    nothing else is found); one that exists but cannot be executed is the answer (126).
    """
    if "/" in program:
        candidates = [program]
    else:
        path = env.get("PATH", "")
        candidates = [os.path.join(d or ".", program) for d in path.split(":")]
    found: OSError | None = None
    for candidate in candidates:
        try:
            os.execve(candidate, args, env)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                continue
            if e.errno == errno.EACCES and not os.path.exists(candidate):
                continue
            if found is None:
                found = e
    return found or OSError(errno.ENOENT, os.strerror(errno.ENOENT))


def exec_failure(program: str, error: OSError) -> ExecError:
    """The error (exit 126 or 127) reported when execvpe failed."""
    not_found = error.errno in (errno.ENOENT, errno.ENOTDIR)
    code = ExitCode.NOT_FOUND if not_found else ExitCode.CANNOT_EXECUTE
    what = (
        "executable file not found in $PATH" if not_found and "/" not in program else error.strerror
    )
    return ExecError(f"{program}: {what}", exit_code=code)


def _close_fds_except(keep: set[int]) -> None:
    low = 3
    for fd in sorted(k for k in keep if k >= 3):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, _max_fd())


def _max_fd() -> int:
    try:
        return int(os.sysconf("SC_OPEN_MAX"))
    except (ValueError, OSError):
        return 65536
