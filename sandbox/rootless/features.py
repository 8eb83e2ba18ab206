"""Host feature probes: the one answer to "can this machine run rootless containers, and how?".

`sandbox doctor` prints these probes and the test suite skips on them (tests/helpers.py), so a
skipped test and a doctor line always give the same reason and the same fix. Each probe checks
one thing for real where that is cheap enough (fork a child that unshares a user namespace,
mount an overlay inside one) and only by inspection otherwise (a binary on PATH, a device node).

Probes never raise: a broken host yields ok=False with the reason in `detail` and, when we know
it, the command or file to change in `fix`. The expensive probes (userns, overlay_userns) keep
their successful results for the current boot in runtime_root()/probes.json, keyed by
/proc/sys/kernel/random/boot_id; failures are never cached, so a host fixed after `sandbox
doctor` told how is seen fixed at once.

The single-thread rule: the forking probes fork only while this process has one thread; from a
threaded process they run in a fresh interpreter instead (`python -m sandbox.rootless.features`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

CACHE_FILE = "probes.json"
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
MIN_SUBIDS = 65536

# sysctl name -> (file, value that blocks unprivileged user namespaces, what to set instead)
_USERNS_SYSCTLS = (
    ("user.max_user_namespaces", Path("/proc/sys/user/max_user_namespaces"), "0", "15000"),
    (
        "kernel.unprivileged_userns_clone",
        Path("/proc/sys/kernel/unprivileged_userns_clone"),
        "0",
        "1",
    ),
    (
        "kernel.apparmor_restrict_unprivileged_userns",
        Path("/proc/sys/kernel/apparmor_restrict_unprivileged_userns"),
        "1",
        "0",
    ),
)

# binary -> Debian/Ubuntu package that ships it
_PACKAGES = {
    "slirp4netns": "slirp4netns",
    "pasta": "passt",
    "fuse-overlayfs": "fuse-overlayfs",
    "newuidmap": "uidmap",
    "newgidmap": "uidmap",
    "podman": "podman",
}


@dataclasses.dataclass(frozen=True)
class Probe:
    """The answer for one feature: whether it works here, why (not), and how to fix it."""

    name: str
    ok: bool
    detail: str
    fix: str | None = None


# ---------------------------------------------------------------------------------------------
# user namespaces


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _userns_blockers() -> list[tuple[str, str]]:
    """(what blocks, how to fix) for each sysctl set to a value that refuses user namespaces."""
    found = []
    for name, path, blocking, wanted in _USERNS_SYSCTLS:
        value = _read(path)
        if value is None or value != blocking:
            continue
        if name == "kernel.unprivileged_userns_clone" and os.geteuid() == 0:
            continue  # only refuses unprivileged callers
        found.append(
            (
                f"sysctl {name} = {value}",
                f"sysctl -w {name}={wanted} (persist it in /etc/sysctl.d/)",
            )
        )
    return found


def _probe_userns() -> Probe:
    blockers = _userns_blockers()
    code = _fork_and_run(_child_unshare_userns)
    if code == 0:
        return Probe("userns", True, "this user can create user namespaces")
    if code is None:
        return _in_fresh_interpreter("userns")
    reason = os.strerror(code) if code < 256 else f"exit status {code - 256}"
    if blockers:
        return Probe(
            "userns",
            False,
            f"unshare(CLONE_NEWUSER) failed: {reason}; " + ", ".join(what for what, _ in blockers),
            fix="; ".join(fix for _, fix in blockers),
        )
    return Probe(
        "userns",
        False,
        f"unshare(CLONE_NEWUSER) failed: {reason}",
        fix="check that the kernel has CONFIG_USER_NS and that no security module "
        "(AppArmor, SELinux, seccomp of a parent container) refuses user namespaces",
    )


def _child_unshare_userns() -> int:  # pragma: no cover - runs in a forked child
    from sandbox.rootless import syscalls

    try:
        syscalls.unshare(syscalls.CLONE_NEWUSER)
    except OSError as e:
        return (e.errno or errno.EPERM) & 0xFF
    return 0


def _fork_and_run(child: Callable[[], int]) -> int | None:
    """Run child() in a forked process; its return value, 256 + exit status if it died
    otherwise, or None when this process has threads and must not fork."""
    if threading.active_count() != 1:
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 255
        try:
            code = child()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) != 255:
        return os.WEXITSTATUS(status)
    return 256 + (os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


def _in_fresh_interpreter(name: str) -> Probe:
    """Run a forking probe in a new interpreter (this process has threads: fork is unsafe)."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "sandbox.rootless.features", "--json", "--no-cache", name],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        fields = json.loads(done.stdout)[0]
        return Probe(**fields)
    except (OSError, subprocess.SubprocessError, ValueError, LookupError, TypeError) as e:
        return Probe(name, False, f"cannot run the probe in a new interpreter: {e}")


# ---------------------------------------------------------------------------------------------
# subordinate ids and the helpers that map them


def _probe_subids(subuid: Path | None = None, subgid: Path | None = None) -> Probe:
    from sandbox.rootless import idmap

    user, uid, gid = idmap.current_user()
    problems = []
    details = []
    for kind, path in (("uids", subuid or idmap.SUBUID), ("gids", subgid or idmap.SUBGID)):
        # getsubids asks libsubid, so ranges from LDAP/SSSD count; another path is read as is.
        ranges, source = subordinate_ranges(kind, user, uid, path)
        total = sum(count for _, count in ranges)
        own = uid if kind == "uids" else gid
        if total < MIN_SUBIDS:
            have = f"only {total}" if total else "no"
            problems.append((kind, path, f"{have} subordinate {kind} for {user} in {source}"))
        elif any(start <= own < start + count for start, count in ranges):
            problems.append(
                (kind, path, f"the subordinate {kind} of {user} in {source} include its own id")
            )
        else:
            spans = ", ".join(f"{start}-{start + count - 1}" for start, count in ranges)
            details.append(f"{kind} {spans}")
    if not problems:
        return Probe("subids", True, f"{user} has subordinate " + "; ".join(details))
    files = " and ".join(str(path) for _, path, _ in problems)
    options = " ".join(f"--add-sub{kind} 100000-165535" for kind, _, _ in problems)
    return Probe(
        "subids",
        False,
        "; ".join(text for _, _, text in problems) + f" (at least {MIN_SUBIDS} are needed)",
        fix=f"add the line '{user}:100000:65536' to {files} (any free range of "
        f"{MIN_SUBIDS} ids), or as root: usermod {options} {user}",
    )


def subordinate_ranges(
    kind: str, user: str, uid: int, path: Path | None
) -> tuple[list[tuple[int, int]], str]:
    """(start, count) ranges of subordinate "uids" or "gids" for user, and where they came from:
    `getsubids` when it is installed and path is the system file, else the file itself."""
    from sandbox.rootless import idmap

    default = idmap.SUBUID if kind == "uids" else idmap.SUBGID
    file = path or default
    tool = shutil.which("getsubids")
    if tool is not None and file == default:
        args = [tool, "-g", user] if kind == "gids" else [tool, user]
        try:
            done = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            done = None
        if done is not None:
            ranges = []
            # Lines look like "0: alice 100000 65536"; exit status 1 means no ranges.
            for line in done.stdout.splitlines():
                fields = line.split()
                if len(fields) == 4 and fields[1] in (user, str(uid)):
                    with contextlib.suppress(ValueError):
                        ranges.append((int(fields[2]), int(fields[3])))
            return ranges, f"{file} (through getsubids)"
    try:
        return idmap.read_subids(file, user, uid), str(file)
    except Exception:  # a HostError for an unreadable file: no ranges we can use
        return [], str(file)


def _probe_newuidmap() -> Probe:
    problems = []
    found = []
    for helper in ("newuidmap", "newgidmap"):
        path = shutil.which(helper)
        if path is None:
            problems.append((f"{helper} is not installed", "apt install uidmap"))
            continue
        try:
            st = os.stat(path)
        except OSError as e:
            problems.append((f"cannot stat {path}: {e.strerror}", "apt install --reinstall uidmap"))
            continue
        setuid_root = bool(st.st_mode & stat.S_ISUID) and st.st_uid == 0
        if setuid_root:
            found.append(f"{path} (setuid root)")
        elif _has_file_capabilities(path):
            found.append(f"{path} (file capabilities)")
        else:
            problems.append(
                (
                    f"{path} is neither setuid root nor has file capabilities",
                    f"chown root {path} && chmod u+s {path} (or apt install --reinstall uidmap)",
                )
            )
    if problems:
        return Probe(
            "newuidmap",
            False,
            "; ".join(p for p, _ in problems),
            fix="; ".join(dict.fromkeys(f for _, f in problems)),
        )
    return Probe("newuidmap", True, ", ".join(found))


def _has_file_capabilities(path: str) -> bool:
    try:
        return bool(os.getxattr(path, "security.capability"))
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# kernel overlay inside a user namespace


def _probe_overlay_userns() -> Probe:
    if threading.active_count() != 1:
        return _in_fresh_interpreter("overlay_userns")
    from sandbox.config import runtime_root
    from sandbox.errors import SandboxError
    from sandbox.rootless import idmap, syscalls, userns
    from sandbox.rootless.channel import Channel

    _, uid, gid = idmap.current_user()
    # Our own id alone is enough to mount: the probe must not depend on subordinate ids.
    mapping = idmap.IdMapping(
        (idmap.IdRange(0, uid, 1),), (idmap.IdRange(0, gid, 1),), single_reason="feature probe"
    )
    import tempfile  # here, not on every run's path (the probes are cached per boot)

    try:
        base = Path(tempfile.mkdtemp(prefix="overlay-probe-", dir=runtime_root()))
    except (OSError, SandboxError) as e:
        return Probe(
            "overlay_userns",
            False,
            f"cannot create a scratch directory: {e}",
            fix="set XDG_RUNTIME_DIR to a writable directory you own",
        )
    try:
        for sub in ("lower", "upper", "work", "merged"):
            (base / sub).mkdir()
        (base / "lower" / "file").write_text("lower\n")
        results: list[str] = []

        def target(channel: Channel) -> int:  # pragma: no cover - runs in the child
            merged = str(base / "merged")
            # Our mounts must not propagate back to the parent's mount namespace.
            syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
            data = (
                f"lowerdir={base / 'lower'},upperdir={base / 'upper'},"
                f"workdir={base / 'work'},userxattr"
            )
            try:
                syscalls.mount("overlay", merged, "overlay", 0, data)
            except OSError as e:
                channel.send("result", ok=False, step="mount", error=str(e))
                return 0
            try:
                # Deleting a lower file makes overlay create a whiteout (a 0/0 char device).
                os.unlink(os.path.join(merged, "file"))
                whiteout = os.lstat(base / "upper" / "file")
                if not stat.S_ISCHR(whiteout.st_mode):
                    raise OSError(errno.EINVAL, "no whiteout was created in the upper layer")
            except OSError as e:
                channel.send("result", ok=False, step="whiteout", error=str(e))
                return 0
            finally:
                syscalls.umount2(merged, syscalls.MNT_DETACH)
            channel.send("result", ok=True)
            return 0

        def on_message(message: dict[str, Any], fds: list[int]) -> None:
            for fd in fds:
                os.close(fd)
            if message.get("ok"):
                results.append("")
            else:
                results.append(f"{message.get('step')}: {message.get('error')}")

        userns.run(mapping, target, flags=syscalls.CLONE_NEWNS, on_message=on_message)
    except (OSError, SandboxError) as e:
        return Probe(
            "overlay_userns",
            False,
            f"cannot test an overlay mount: {e}",
            fix="run 'sandbox doctor' and fix the userns probe first",
        )
    finally:
        _remove_tree(base)
    if results == [""]:
        return Probe(
            "overlay_userns",
            True,
            "overlay mounts with userxattr inside a user namespace (whiteouts work)",
        )
    detail = results[0] if results else "the probe reported nothing"
    release = os.uname().release
    return Probe(
        "overlay_userns",
        False,
        f"overlay inside a user namespace failed at {detail} (kernel {release})",
        fix="use a kernel >= 5.11 (overlay with userxattr in user namespaces); meanwhile "
        "containers' roots are mounted with fuse-overlayfs when it and /dev/fuse work, "
        "else copied (storage_driver in config.yaml chooses)",
    )


def _remove_tree(path: Path) -> None:
    """rm -r that copes with the mode-000 'work' directory overlay leaves behind."""
    # os.walk is top-down: each directory is made searchable before the walk enters it.
    for root, dirs, _ in os.walk(path):
        for d in dirs:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(root, d), 0o700)
    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# devices, helper binaries, cgroups


def _probe_device(name: str, path: str, why: str) -> Probe:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        module = "tun" if name == "tun" else "fuse"
        return Probe(
            name, False, f"{path} does not exist ({why})", fix=f"modprobe {module} (as root)"
        )
    except OSError as e:
        mode = ""
        with contextlib.suppress(OSError):
            mode = f", mode {stat.S_IMODE(os.stat(path).st_mode):04o}"
        return Probe(
            name,
            False,
            f"cannot open {path}: {e.strerror}{mode} ({why})",
            fix=f"chmod 0666 {path} (as root; mainstream distributions ship it so)",
        )
    os.close(fd)
    return Probe(name, True, f"{path} can be opened")


def _probe_binary(name: str, why: str) -> Probe:
    path = shutil.which(name)
    if path is None:
        return Probe(
            name, False, f"{name} is not on PATH ({why})", fix=f"apt install {_PACKAGES[name]}"
        )
    return Probe(name, True, path)


def cgroup_layout(mountinfo: str) -> tuple[str, str]:
    """("unified" | "hybrid" | "legacy" | "none", where) from the text of /proc/self/mountinfo."""
    v2: list[str] = []
    v1: list[str] = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        fstype = line.split(" - ", 1)[1].split()[0]
        point = fields[4]
        if fstype == "cgroup2":
            v2.append(point)
        elif fstype == "cgroup":
            v1.append(point)
    if "/sys/fs/cgroup" in v2:
        return "unified", "/sys/fs/cgroup"
    if v1 and v2:
        return "hybrid", v2[0]
    if v1:
        return "legacy", "/sys/fs/cgroup"
    if v2:
        return "hybrid", v2[0]
    return "none", ""


def _probe_cgroup2(
    mountinfo: Path = Path("/proc/self/mountinfo"), root: Path = Path("/sys/fs/cgroup")
) -> Probe:
    text = _read(mountinfo)
    if text is None:
        return Probe("cgroup2", False, f"cannot read {mountinfo}")
    layout, where = cgroup_layout(text)
    fix = (
        "boot with systemd.unified_cgroup_hierarchy=1 (cgroup v2); until then --memory, "
        "--cpus and --pids-limit cannot be enforced"
    )
    if layout == "unified":
        controllers = _read(root / "cgroup.controllers")
        if controllers is None:
            return Probe("cgroup2", False, f"{root} is cgroup2 but has no cgroup.controllers")
        return Probe(
            "cgroup2", True, f"unified hierarchy at {root}; controllers: {controllers or '(none)'}"
        )
    if layout == "hybrid":
        controllers = _read(Path(where) / "cgroup.controllers")
        return Probe(
            "cgroup2",
            False,
            f"hybrid layout: v1 controllers under {root}, cgroup2 at "
            f"{where} carries only: {controllers or '(none)'}",
            fix=fix,
        )
    if layout == "legacy":
        return Probe("cgroup2", False, f"legacy layout: only cgroup v1 under {root}", fix=fix)
    return Probe(
        "cgroup2",
        False,
        "no cgroup filesystem is mounted",
        fix=f"mount -t cgroup2 none {root} (as root)",
    )


# ---------------------------------------------------------------------------------------------
# the user's session: sysctls, XDG_RUNTIME_DIR, lingering, cgroup delegation, the user bus

_DELEGATE_FIX = (
    "as root: mkdir -p /etc/systemd/system/user@.service.d && printf '[Service]\\n"
    "Delegate=cpu cpuset io memory pids\\n' > /etc/systemd/system/user@.service.d/delegate.conf"
    " && systemctl daemon-reload, then log in again"
)
_APPARMOR_PROFILE = "/etc/apparmor.d/sandbox"
# Controllers a container's limits need (--cpus, --memory, --pids-limit, --blkio-weight).
WANTED_CONTROLLERS = ("cpu", "memory", "pids", "io")


def _probe_sysctls() -> Probe:
    values = []
    for name, path, _, _ in _USERNS_SYSCTLS:
        value = _read(path)
        if value is not None:
            values.append(f"{name} = {value}")
    blockers = _userns_blockers()
    if not blockers:
        return Probe("sysctls", True, "; ".join(values) or "no user-namespace sysctl is present")
    fixes = [fix for _, fix in blockers]
    if any("apparmor" in what for what, _ in blockers):
        fixes.append(
            f"or keep the restriction and allow sandbox: write a profile {_APPARMOR_PROFILE} "
            f"'abi <abi/4.0>, include <tunables/global> profile sandbox {sys.executable} "
            "flags=(unconfined) { userns, }' and load it with apparmor_parser -r "
            f"{_APPARMOR_PROFILE}"
        )
    return Probe("sysctls", False, "; ".join(w for w, _ in blockers), fix="; ".join(fixes))


def _probe_xdg_runtime() -> Probe:
    uid = os.getuid()
    fallback = f"sandbox keeps its state in /tmp/sandbox-{uid} meanwhile"
    fix = (
        "log in through a PAM session with pam_systemd (it creates /run/user/UID), "
        "or export XDG_RUNTIME_DIR=<a 0700 directory you own>"
    )
    raw = os.environ.get("XDG_RUNTIME_DIR", "")
    if not raw:
        return Probe("xdg_runtime", False, f"XDG_RUNTIME_DIR is not set; {fallback}", fix=fix)
    if not os.path.isabs(raw):
        return Probe("xdg_runtime", False, f"XDG_RUNTIME_DIR={raw} is not absolute", fix=fix)
    try:
        st = os.stat(raw)
    except OSError as e:
        return Probe("xdg_runtime", False, f"XDG_RUNTIME_DIR={raw}: {e.strerror}", fix=fix)
    if st.st_uid != uid or not os.access(raw, os.W_OK | os.X_OK):
        return Probe(
            "xdg_runtime", False, f"XDG_RUNTIME_DIR={raw} is not yours or not writable", fix=fix
        )
    if st.st_mode & 0o077:
        return Probe(
            "xdg_runtime",
            False,
            f"XDG_RUNTIME_DIR={raw} is mode {stat.S_IMODE(st.st_mode):04o}: others can see "
            "container state",
            fix=f"chmod 0700 {raw}",
        )
    return Probe("xdg_runtime", True, f"XDG_RUNTIME_DIR={raw} (yours, mode 0700)")


def _probe_linger(linger_dir: Path = Path("/var/lib/systemd/linger")) -> Probe:
    from sandbox.rootless import idmap

    user, _, _ = idmap.current_user()
    if (linger_dir / user).exists():
        return Probe("linger", True, f"lingering is enabled for {user} ({linger_dir / user})")
    return Probe(
        "linger",
        False,
        f"lingering is not enabled for {user}: the user manager, its cgroups and detached "
        "containers end at logout",
        fix=f"loginctl enable-linger {user}",
    )


def own_cgroup(text: str | None = None) -> str | None:
    """This process's cgroup v2 path ("/user.slice/...") from /proc/self/cgroup, if any."""
    if text is None:
        text = _read(Path("/proc/self/cgroup"))
    for line in (text or "").splitlines():
        if line.startswith("0::"):
            return line[3:] or "/"
    return None


def delegated_cgroup(root: Path = Path("/sys/fs/cgroup")) -> Path | None:
    """The topmost cgroup above (and including) ours that this user owns: the delegated one."""
    path = own_cgroup()
    if path is None:
        return None
    current = root / path.lstrip("/")
    found = None
    uid = os.getuid()
    while current != root and root in current.parents:
        try:
            if os.stat(current).st_uid != uid:
                break
        except OSError:
            break
        found = current
        current = current.parent
    return found


def _probe_cgroup_delegation(
    mountinfo: Path = Path("/proc/self/mountinfo"), root: Path = Path("/sys/fs/cgroup")
) -> Probe:
    text = _read(mountinfo)
    layout, where = cgroup_layout(text or "")
    if layout != "unified":
        return Probe(
            "cgroup_delegation",
            False,
            f"no cgroup is delegated to this user: the cgroup layout is {layout}"
            + (f" (cgroup2 at {where})" if where else "")
            + "; --memory, --cpus and --pids-limit cannot be enforced",
            fix="boot with systemd.unified_cgroup_hierarchy=1 (cgroup v2), then delegate "
            "controllers to user sessions: " + _DELEGATE_FIX,
        )
    delegated = delegated_cgroup(root)
    if delegated is None:
        return Probe(
            "cgroup_delegation",
            False,
            f"cgroup v2, but no cgroup above ours ({own_cgroup()}) belongs to this user",
            fix="log in through systemd-logind (loginctl enable-linger $USER) so that "
            "user@UID.service owns a cgroup; " + _DELEGATE_FIX,
        )
    controllers = (_read(delegated / "cgroup.controllers") or "").split()
    lacking = [c for c in WANTED_CONTROLLERS if c not in controllers]
    if lacking:
        return Probe(
            "cgroup_delegation",
            False,
            f"{delegated} is delegated with controllers: {' '.join(controllers) or '(none)'}; "
            f"missing: {' '.join(lacking)}",
            fix=_DELEGATE_FIX,
        )
    return Probe(
        "cgroup_delegation", True, f"{delegated} is delegated with: {' '.join(controllers)}"
    )


def user_bus_path() -> Path | None:
    """The systemd user bus socket: DBUS_SESSION_BUS_ADDRESS's unix:path, else the runtime dir's."""
    address = os.environ.get("DBUS_SESSION_BUS_ADDRESS", "")
    for part in address.split(";"):
        if part.startswith("unix:"):
            for option in part[5:].split(","):
                key, _, value = option.partition("=")
                if key == "path" and value:
                    return Path(value)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "bus" if runtime else Path(f"/run/user/{os.getuid()}/bus")


def _probe_user_bus() -> Probe:
    import socket

    path = user_bus_path()
    fix = (
        "install dbus-user-session and log in through systemd-logind "
        "(loginctl enable-linger $USER starts the user manager); sandbox uses cgroupfs "
        "directly without it"
    )
    if path is None:
        return Probe("user_bus", False, "no systemd user bus address", fix=fix)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(2)
        sock.connect(str(path))
    except OSError as e:
        return Probe(
            "user_bus", False, f"cannot connect to the user bus {path}: {e.strerror}", fix=fix
        )
    finally:
        sock.close()
    return Probe("user_bus", True, f"the systemd user bus answers at {path}")


# ---------------------------------------------------------------------------------------------
# the storage directory, ports, nesting

_NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "fuse.sshfs", "9p", "ceph", "lustre", "glusterfs")


def mount_of(path: Path, mountinfo: str) -> tuple[str, str, set[str]]:
    """(mount point, filesystem type, mount options) of the mount holding path."""
    best = ("/", "unknown", set[str]())
    target = str(path)
    for line in mountinfo.splitlines():
        if " - " not in line:
            continue
        left, right = line.split(" - ", 1)
        fields = left.split()
        if len(fields) < 6:
            continue
        # mountinfo escapes spaces and friends as \\040 etc.
        point = fields[4].encode().decode("unicode_escape")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, right.split()[0], set(fields[5].split(",")))
    return best


def _probe_storage_fs() -> Probe:
    from sandbox import config

    try:
        where = config.load().data_root
    except Exception:  # a broken config file is the config check's to report
        where = config.data_home() / "sandbox"
    existing = where
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    point, fstype, options = mount_of(existing.resolve(), _read(Path("/proc/self/mountinfo")) or "")
    what = f"{where} is on {fstype} (mounted at {point})"
    if fstype in _NETWORK_FS or fstype.startswith("nfs"):
        return Probe(
            "storage_fs",
            False,
            f"{what}: a network filesystem cannot hold files owned by subordinate ids, nor "
            "an overlay upper layer",
            fix="set data_root in ~/.config/sandbox/config.yaml to a local directory, "
            "for example under /var/tmp",
        )
    if "noexec" in options:
        return Probe(
            "storage_fs",
            False,
            f"{what} with noexec: programs in containers could not be executed",
            fix="set data_root in ~/.config/sandbox/config.yaml to a directory on a "
            "filesystem mounted without noexec",
        )
    if not os.access(existing, os.W_OK):
        return Probe(
            "storage_fs",
            False,
            f"{what}, but {existing} is not writable by this user",
            fix=f"set data_root in ~/.config/sandbox/config.yaml, or fix the owner of {existing}",
        )
    return Probe("storage_fs", True, what)


def _probe_unprivileged_ports(
    path: Path = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start"),
) -> Probe:
    value = _read(path)
    if value is None or not value.isdigit():
        return Probe("unprivileged_ports", False, f"cannot read {path}")
    start = int(value)
    if start <= 80:
        return Probe(
            "unprivileged_ports",
            True,
            f"net.ipv4.ip_unprivileged_port_start = {start}: host ports from {start} can be "
            "published",
        )
    return Probe(
        "unprivileged_ports",
        False,
        f"net.ipv4.ip_unprivileged_port_start = {start}: host ports below {start} cannot be "
        "published (-p 80:80); higher ones can",
        fix="sysctl -w net.ipv4.ip_unprivileged_port_start=80 "
        "(persist it in /etc/sysctl.d/), or publish a port >= " + str(start),
    )


def _probe_nested() -> Probe:
    markers = [p for p in ("/.dockerenv", "/run/.containerenv") if os.path.exists(p)]
    # systemd's convention for "this is a container" is a lower-case variable.
    flavour = os.environ.get("container")  # noqa: SIM112
    if flavour:
        markers.append(f"container={flavour}")
    limits = []
    status = _read(Path("/proc/self/status")) or ""
    for line in status.splitlines():
        if line.startswith("Seccomp:") and line.split()[1:] not in ([], ["0"]):
            limits.append("a seccomp filter is installed on this process")
    # Mounts over /proc/... (a container runtime's masked paths) make the kernel refuse a
    # fresh proc mount in a new PID namespace ("mount_too_revealing").
    masked = []
    for line in (_read(Path("/proc/self/mountinfo")) or "").splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4].startswith("/proc/") and "binfmt_misc" not in fields[4]:
            masked.append(fields[4])
    if masked:
        limits.append(f"paths under /proc are masked: {', '.join(masked[:4])}")
    seen = ", ".join(markers)
    if not limits:
        if markers:
            return Probe(
                "nested",
                True,
                f"container markers ({seen}), but no masked /proc and no seccomp filter: "
                "nesting works",
            )
        return Probe("nested", True, "not running inside another container")
    return Probe(
        "nested",
        False,
        f"running inside another container{f' ({seen})' if seen else ''}: " + "; ".join(limits),
        fix="run the outer container with an unmasked /proc and no seccomp filter (podman: "
        "--security-opt unmask=/proc/* --security-opt seccomp=unconfined; docker: "
        "--security-opt systempaths=unconfined --security-opt seccomp=unconfined)",
    )


def _child_nftables() -> int:  # pragma: no cover - runs in a forked child
    from sandbox.rootless import nftables, syscalls

    try:
        syscalls.unshare(syscalls.CLONE_NEWUSER | syscalls.CLONE_NEWNET)
        nftables.install([])
    except OSError as e:
        return (e.errno or errno.EPERM) & 0xFF
    return 0


def _probe_nftables() -> Probe:
    """--egress-allow installs nf_tables rules in the container's own network namespace."""
    code = _fork_and_run(_child_nftables)
    if code == 0:
        return Probe("nftables", True, "nf_tables works in a user-owned network namespace")
    if code is None:
        return _in_fresh_interpreter("nftables")
    reason = os.strerror(code) if code < 256 else f"exit status {code - 256}"
    return Probe(
        "nftables",
        False,
        f"cannot install nf_tables rules in a new network namespace: {reason}",
        fix="--egress-allow needs a kernel with CONFIG_NF_TABLES, CONFIG_NFT_CT and "
        "CONFIG_NFT_REJECT_INET (or the nf_tables modules loaded: modprobe nf_tables)",
    )


def _probe_native_monitor() -> Probe:
    """Whether detached containers get the small C monitor (sandbox/libexec) or the Python one."""
    from sandbox import libexec

    name = "native_monitor"
    program, why = libexec.monitor_program(build=False)
    if program is not None:
        return Probe(name, True, f"detached containers are monitored by {program}")
    if why.startswith("not built yet"):
        return Probe(name, True, why)
    fix = f"unset {libexec.ENV}" if why.startswith(libexec.ENV) else libexec.INSTALL_HINT
    return Probe(name, False, f"the Python monitor is used ({why}; ~16 MiB per container)", fix)


def _probe_pod_infra() -> Probe:
    """Whether `kube play` can make a pod's infra container: the static pause program."""
    from sandbox import libexec

    name = "pod_infra"
    program, why = libexec.pause_program(build=False)
    if program is not None:
        return Probe(name, True, f"pods' infra containers run {program}")
    if not why.startswith("not built yet"):
        return Probe(name, False, f"kube play cannot run pods ({why})", fix=libexec.PAUSE_HINT)
    # Not built yet: `cc -static` also needs libc.a, which cc finds (a full path) or not.
    try:
        found = subprocess.run(
            ["cc", "-print-file-name=libc.a"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        found = ""
    if not os.path.isabs(found):
        return Probe(name, False, "kube play cannot run pods (no static libc)", libexec.PAUSE_HINT)
    return Probe(name, True, why)


# ---------------------------------------------------------------------------------------------
# the table, the cache, the entry points

_PROBES: dict[str, Callable[[], Probe]] = {
    "userns": _probe_userns,
    "subids": _probe_subids,
    "newuidmap": _probe_newuidmap,
    "overlay_userns": _probe_overlay_userns,
    "tun": lambda: _probe_device("tun", "/dev/net/tun", "slirp4netns and pasta need it"),
    "fuse": lambda: _probe_device("fuse", "/dev/fuse", "fuse-overlayfs needs it"),
    "slirp4netns": lambda: _probe_binary("slirp4netns", "networking with --network slirp4netns"),
    "pasta": lambda: _probe_binary("pasta", "networking with --network pasta"),
    "fuse-overlayfs": lambda: _probe_binary(
        "fuse-overlayfs",
        "--userns=keep-id and sandbox dev need it to show image files with their owners; "
        "the root filesystem without kernel overlay",
    ),
    "cgroup2": _probe_cgroup2,
    "sysctls": _probe_sysctls,
    "xdg_runtime": _probe_xdg_runtime,
    "linger": _probe_linger,
    "cgroup_delegation": _probe_cgroup_delegation,
    "user_bus": _probe_user_bus,
    "storage_fs": _probe_storage_fs,
    "unprivileged_ports": _probe_unprivileged_ports,
    "nested": _probe_nested,
    "nftables": _probe_nftables,
    "podman": lambda: _probe_binary("podman", "tests that drive sandbox-runtime through podman"),
    "native_monitor": _probe_native_monitor,
    "pod_infra": _probe_pod_infra,
}

NAMES: tuple[str, ...] = tuple(_PROBES)

# Probes that fork or mount: worth remembering for the rest of the boot when they succeed.
_CACHED = frozenset({"userns", "overlay_userns"})


def _cache_path() -> Path | None:
    from sandbox.config import runtime_root
    from sandbox.errors import SandboxError

    try:
        return runtime_root() / CACHE_FILE
    except (OSError, SandboxError):
        return None


def _load_cache(path: Path, boot_id: str) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict) or doc.get("boot_id") != boot_id:
        return {}
    probes = doc.get("probes")
    return probes if isinstance(probes, dict) else {}


def _cached(name: str) -> Probe | None:
    boot_id = _read(BOOT_ID)
    path = _cache_path()
    if boot_id is None or path is None:
        return None
    entry = _load_cache(path, boot_id).get(name)
    if not isinstance(entry, dict):
        return None
    try:
        return Probe(
            name=name, ok=bool(entry["ok"]), detail=str(entry["detail"]), fix=entry.get("fix")
        )
    except KeyError:
        return None


def _store(result: Probe) -> None:
    boot_id = _read(BOOT_ID)
    path = _cache_path()
    if boot_id is None or path is None:
        return
    probes = _load_cache(path, boot_id)
    probes[result.name] = {"ok": result.ok, "detail": result.detail, "fix": result.fix}
    import tempfile

    try:
        fd, tmp = tempfile.mkstemp(prefix=".probes-", dir=path.parent)
    except OSError:
        return
    try:
        # Write then rename: concurrent readers see the old file or the new one, never half.
        with os.fdopen(fd, "w") as f:
            json.dump({"boot_id": boot_id, "probes": probes}, f, indent=1)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def probe(name: str, *, use_cache: bool = True) -> Probe:
    """Probe one feature by name (see NAMES); raises KeyError for an unknown name.

    use_cache=False ignores and does not update the per-boot cache (`sandbox doctor --fresh`).
    """
    function = _PROBES[name]
    cacheable = use_cache and name in _CACHED
    if cacheable:
        cached = _cached(name)
        if cached is not None:
            return cached
    try:
        result = function()
    except Exception as e:  # a probe must answer, whatever the host throws at it
        result = Probe(name, False, f"the probe failed: {type(e).__name__}: {e}")
    if cacheable and result.ok:
        _store(result)
    return result


def probe_all(*, use_cache: bool = True) -> list[Probe]:
    """Every probe, in the order of NAMES."""
    return [probe(name, use_cache=use_cache) for name in NAMES]


def main(argv: list[str] | None = None) -> int:
    """`python -m sandbox.rootless.features [--json] [--no-cache] [NAME...]`: print probes.

    Exit status 0 when every probe asked for is ok, 1 otherwise, 2 for an unknown name.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in args
    use_cache = "--no-cache" not in args
    names = [a for a in args if not a.startswith("--")] or list(NAMES)
    unknown = [n for n in names if n not in _PROBES]
    if unknown:
        print(f"unknown probe(s): {', '.join(unknown)}; known: {', '.join(NAMES)}", file=sys.stderr)
        return 2
    results = [probe(n, use_cache=use_cache) for n in names]
    if as_json:
        print(json.dumps([dataclasses.asdict(r) for r in results]))
    else:
        for r in results:
            print(f"{'ok  ' if r.ok else 'FAIL'} {r.name}: {r.detail}")
            if r.fix and not r.ok:
                print(f"     fix: {r.fix}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
