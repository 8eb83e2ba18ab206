"""The container's security settings: what they are (Security, built before any process
exists) and applying them in the container's last steps before execve.

Defaults follow podman's rootless defaults: its capability set, our own seccomp profile
(sandbox/rootless/seccomp_default.json), its masked and read-only paths, no_new_privs off.
no_new_privs stays off by default as in podman and Docker: with it on, setuid programs in the
image (su, sudo, ping on old images) stop working, and the seccomp filter does not need it
because we install the filter while still holding CAP_SYS_ADMIN of the container's user
namespace. --privileged gives every capability, no seccomp and no masking, as podman does.

The apply order (the runtime calls these, in this order, for `run` and for `exec`):
  prepare(sec)           rlimits; drop the bounding set; clear ambient; keep caps over setresuid
  (caller)               setgroups/setresgid/setresuid
  restrict(sec)          capset; no_new_privs
  (caller)               close fds, report ready
  install_seccomp(sec)   the precompiled BPF program, the very last step before execve
"""

from __future__ import annotations

import dataclasses
import errno
import os
from collections.abc import Mapping, Sequence
from typing import Any

from sandbox.errors import ContainerError, UsageError
from sandbox.rootless import caps, rlimits

# podman's (containers/common) DefaultMaskedPaths and DefaultReadOnlyPaths.
MASKED_PATHS = (
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/pressure",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/dev/block",
    "/sys/firmware",
    "/sys/fs/selinux",
)
READONLY_PATHS = (
    "/proc/asound",
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)


@dataclasses.dataclass(frozen=True)
class Security:
    """The effective security settings of one container (recorded; shown by inspect)."""

    capabilities: tuple[str, ...] = caps.DEFAULT  # names without CAP_, bit order
    privileged: bool = False
    no_new_privileges: bool = False
    seccomp: str = "default"  # "default", "unconfined", or the path of a loaded profile
    masked_paths: tuple[str, ...] = MASKED_PATHS
    readonly_paths: tuple[str, ...] = READONLY_PATHS
    rlimits: tuple[rlimits.Rlimit, ...] = ()
    # The compiled filter (struct sock_filter[]) and seccomp(2) flags; None when unconfined.
    seccomp_filter: bytes | None = dataclasses.field(default=None, repr=False, compare=False)
    seccomp_flags: int = 0

    def describe(self) -> dict[str, object]:
        """A JSON-ready summary, for container records and `sandbox inspect`."""
        return {
            "capabilities": ["CAP_" + c for c in self.capabilities],
            "cap_eff": caps.to_hex(self.capabilities),
            "privileged": self.privileged,
            "no_new_privileges": self.no_new_privileges,
            "seccomp": self.seccomp,
            "masked_paths": list(self.masked_paths),
            "readonly_paths": list(self.readonly_paths),
            "rlimits": [dataclasses.asdict(r) for r in self.rlimits],
        }


# The settings of a spec built without options (compiled filter: none; init fails closed).
DEFAULT_SECURITY = Security()


def build(
    *,
    cap_add: Sequence[str] = (),
    cap_drop: Sequence[str] = (),
    privileged: bool = False,
    security_opts: Sequence[str] = (),
    ulimits: Sequence[str] = (),
) -> Security:
    """Validate the options and compile the seccomp filter; raises UsageError, no side effects."""
    from sandbox.rootless import seccomp

    capabilities = caps.resolve(cap_add, cap_drop, privileged=privileged)
    nnp = False
    profile_name = "unconfined" if privileged else "default"
    masked: tuple[str, ...] = () if privileged else MASKED_PATHS
    readonly: tuple[str, ...] = () if privileged else READONLY_PATHS
    for opt in security_opts:
        key, has_value, value = opt.partition("=")
        if not has_value:
            key, _, value = opt.partition(":")  # Docker's old "seccomp:PATH" spelling
        if key == "no-new-privileges":
            if value not in ("", "true", "false"):
                raise UsageError(
                    f"invalid --security-opt {opt!r}", hint="no-new-privileges[=true|false]"
                )
            nnp = value != "false"
        elif key == "seccomp":
            if not value:
                raise UsageError(
                    f"invalid --security-opt {opt!r}",
                    hint="seccomp=PROFILE.json or seccomp=unconfined",
                )
            profile_name = value if value == "unconfined" else os.path.abspath(value)
        elif key == "mask":
            masked += tuple(_paths(value, opt))
        elif key == "unmask":
            drop = set(_paths(value, opt)) if value != "ALL" else set(masked) | set(readonly)
            masked = tuple(p for p in masked if p not in drop)
            readonly = tuple(p for p in readonly if p not in drop)
        elif key in ("label", "apparmor") and value in ("disable", "unconfined"):
            continue  # no SELinux label or AppArmor profile is applied: nothing to turn off
        else:
            raise UsageError(
                f"unsupported --security-opt {opt!r}",
                hint="supported: seccomp=PROFILE.json|unconfined, no-new-privileges, "
                "mask=PATHS, unmask=PATHS|ALL",
            )
    program = None
    flags = 0
    if profile_name != "unconfined":
        profile = (
            seccomp.default_profile()
            if profile_name == "default"
            else seccomp.load_profile(profile_name)
        )
        program = _compile(profile, capabilities)
        flags = seccomp.flags(profile)
    return Security(
        capabilities=capabilities,
        privileged=privileged,
        no_new_privileges=nnp,
        seccomp=profile_name,
        masked_paths=masked,
        readonly_paths=readonly,
        rlimits=rlimits.parse_all(ulimits),
        seccomp_filter=program,
        seccomp_flags=flags,
    )


def _compile(profile: Mapping[str, Any], capabilities: Sequence[str]) -> bytes:
    """The filter, from the per-boot cache in the runtime directory when it is there."""
    from sandbox import config
    from sandbox.errors import HostError
    from sandbox.rootless import seccomp

    try:
        cache = config.private_dir(config.runtime_root() / "seccomp")
    except HostError:
        return seccomp.compile(profile, capabilities=capabilities)
    return seccomp.compile_cached(profile, capabilities=capabilities, cache_dir=cache)


def _paths(value: str, opt: str) -> list[str]:
    paths = [p for p in value.split(":") if p]
    if not paths or not all(p.startswith("/") for p in paths):
        raise UsageError(
            f"invalid --security-opt {opt!r}", hint="give absolute paths joined by ':'"
        )
    return [os.path.normpath(p) for p in paths]


# --- in the container -----------------------------------------------------------------------


def mask_paths(root_fd: int, security: Security) -> None:
    """Hide masked paths (files: /dev/null over them; directories: an empty read-only tmpfs)
    and make the read-only paths read-only. Runs after /proc, /sys and /dev are mounted.

    Targets are opened in-root, so an image cannot point them elsewhere with symlinks.
    """
    from sandbox.rootless import mounts, syscalls

    for path in security.masked_paths:
        try:
            target = mounts.open_in_root(root_fd, path)
        except FileNotFoundError:
            continue
        try:
            where = mounts.fd_path(target)
            if os.path.isdir(where):
                syscalls.mount("tmpfs", where, "tmpfs", syscalls.MS_RDONLY, "size=0,mode=0555")
            else:
                null = mounts.open_in_root(root_fd, "/dev/null")
                try:
                    syscalls.mount(mounts.fd_path(null), where, None, syscalls.MS_BIND)
                finally:
                    os.close(null)
        except OSError as e:
            raise ContainerError(f"cannot mask {path}", context=e.strerror) from e
        finally:
            os.close(target)
    for path in security.readonly_paths:
        try:
            target = mounts.open_in_root(root_fd, path)
        except FileNotFoundError:
            continue
        try:
            # A read-only bind of the path onto itself: mounts' bind keeps the locked flags.
            mounts.mount_at(
                root_fd, mounts.Mount(path, "bind", mounts.fd_path(target), ("rbind", "ro"))
            )
        except ContainerError as e:
            raise ContainerError(f"cannot make {path} read-only", context=e.context) from e
        finally:
            os.close(target)


def prepare(security: Security) -> None:
    """Before the user switch: rlimits, the bounding set, the ambient set, PR_SET_KEEPCAPS."""
    rlimits.apply(security.rlimits)
    try:
        # Dropping from the bounding set needs CAP_SETPCAP, which we hold until restrict().
        caps.drop_bounding(caps.mask(security.capabilities))
        caps.clear_ambient()
        # setresuid away from 0 would empty the permitted set; restrict() needs it.
        caps.keep_caps(True)
    except OSError as e:
        raise ContainerError("cannot drop capabilities", context=e.strerror) from e


def restrict(security: Security) -> None:
    """After the user switch: the capability sets, then no_new_privs."""
    from sandbox.rootless import syscalls

    wanted = caps.mask(security.capabilities)
    held = wanted
    if security.seccomp_filter is not None and not security.no_new_privileges:
        # seccomp(2) needs no_new_privs or CAP_SYS_ADMIN; we keep the latter until execve,
        # which drops it: execve computes the new sets from the bounding set (uid 0) or
        # empties them (any other uid), and SYS_ADMIN is not in the bounding set.
        held |= 1 << caps.SYS_ADMIN
    try:
        # Inheritable stays empty (runc CVE-2022-29162, moby CVE-2022-24769): with it, a
        # non-root user could gain file-inheritable capabilities by exec.
        caps.capset(effective=held, permitted=held, inheritable=0)
        caps.keep_caps(False)
        if security.no_new_privileges:
            syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)
    except OSError as e:
        raise ContainerError("cannot set capabilities", context=e.strerror) from e


def install_seccomp(security: Security) -> None:
    """The last step before execve: nothing but execve and error reporting runs after it."""
    from sandbox.rootless import syscalls

    if security.seccomp == "unconfined":
        return
    if security.seccomp_filter is None:
        # Fail closed: a spec that asks for seccomp but carries no program is a bug.
        raise ContainerError("internal error: the seccomp filter was not compiled")
    try:
        syscalls.set_seccomp_filter(security.seccomp_filter, security.seccomp_flags)
    except OSError as e:
        hint = None
        if e.errno == errno.EINVAL and security.seccomp_flags:
            hint = "this kernel does not know a flag the profile asks for; remove its 'flags'"
        raise ContainerError(
            "cannot install the seccomp filter", context=e.strerror, hint=hint
        ) from e
