"""Seccomp: profiles in the OCI/Docker JSON format, compiled to a BPF program with libseccomp.

We compile with libseccomp (a thin ctypes binding to libseccomp.so.2) rather than a BPF
compiler of our own: it knows every architecture's syscall table, the x32 bit and i386's
socketcall multiplexing, which are exactly the places a hand-written compiler gets a bypass
wrong. It runs in the caller, before the container exists: compile() returns the program as
bytes (seccomp_export_bpf), and the container installs it with one seccomp(2) call as the
very last step before execve (syscalls.set_seccomp_filter), so no library code runs there.

The profile format (what Docker, podman and containers/common publish):
  defaultAction, defaultErrnoRet, architectures | archMap, flags,
  syscalls: [{names|name, action, errnoRet, args: [{index, value, valueTwo, op}],
              includes: {caps, arches, minKernel}, excludes: {caps, arches, minKernel}}]
A rule applies when every included capability is granted, the native architecture is among
the included arches and the kernel is at least minKernel; an excluded capability that is
granted, an excluded arch that is native, or a kernel at least excludes.minKernel skips it.
Syscall names this libseccomp does not know are skipped (as runc does). Without architectures
we filter the native architecture and the ones it can run (x86_64: i386 and x32), so that
int 0x80 or the x32 bit cannot bypass the filter.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from sandbox.errors import HostError, UsageError

DEFAULT_PROFILE = Path(__file__).with_name("seccomp_default.json")
LIBRARY = "libseccomp.so.2"

# <seccomp.h>
ACT_KILL_PROCESS = 0x80000000
ACT_KILL_THREAD = 0x00000000
ACT_TRAP = 0x00030000
ACT_ERRNO = 0x00050000
ACT_TRACE = 0x7FF00000
ACT_LOG = 0x7FFC0000
ACT_ALLOW = 0x7FFF0000

_ACTIONS = {
    "SCMP_ACT_KILL": ACT_KILL_THREAD,
    "SCMP_ACT_KILL_THREAD": ACT_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": ACT_KILL_PROCESS,
    "SCMP_ACT_TRAP": ACT_TRAP,
    "SCMP_ACT_ERRNO": ACT_ERRNO,
    "SCMP_ACT_TRACE": ACT_TRACE,
    "SCMP_ACT_LOG": ACT_LOG,
    "SCMP_ACT_ALLOW": ACT_ALLOW,
}
_OPS = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}
# AUDIT_ARCH_* tokens, as libseccomp names them.
ARCHES = {
    "SCMP_ARCH_X86": 0x40000003,
    "SCMP_ARCH_X86_64": 0xC000003E,
    "SCMP_ARCH_X32": 0x4000003E,
    "SCMP_ARCH_ARM": 0x40000028,
    "SCMP_ARCH_AARCH64": 0xC00000B7,
    "SCMP_ARCH_PPC64LE": 0xC0000015,
    "SCMP_ARCH_S390": 0x00000016,
    "SCMP_ARCH_S390X": 0x80000016,
    "SCMP_ARCH_RISCV64": 0xC00000F3,
}
# platform.machine() -> (libseccomp arch, the arches it can run, Docker's name for it)
_NATIVE = {
    "x86_64": ("SCMP_ARCH_X86_64", ("SCMP_ARCH_X86", "SCMP_ARCH_X32"), ("amd64", "x86_64")),
    "aarch64": ("SCMP_ARCH_AARCH64", ("SCMP_ARCH_ARM",), ("arm64", "aarch64")),
    "riscv64": ("SCMP_ARCH_RISCV64", (), ("riscv64",)),
    "ppc64le": ("SCMP_ARCH_PPC64LE", (), ("ppc64le",)),
    "s390x": ("SCMP_ARCH_S390X", ("SCMP_ARCH_S390",), ("s390x",)),
}
# seccomp(2) filter flags a profile may ask for.
FLAGS = {
    "SECCOMP_FILTER_FLAG_TSYNC": 1,
    "SECCOMP_FILTER_FLAG_LOG": 2,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 4,
}
_NR_SCMP_ERROR = -1
_SCMP_FLTATR_CTL_NNP = 3


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


class ProfileError(UsageError):
    """A seccomp profile that cannot be read or uses something we cannot honour."""


_lib: ctypes.CDLL | None = None


def _libseccomp() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        try:
            lib = ctypes.CDLL(LIBRARY, use_errno=True)
        except OSError as e:
            raise HostError(
                "cannot load libseccomp",
                context=str(e),
                hint="install libseccomp2 (apt-get install libseccomp2), or run with "
                "--security-opt seccomp=unconfined",
            ) from e
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        lib.seccomp_arch_remove.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        lib.seccomp_arch_native.restype = ctypes.c_uint32
        lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_rule_add_array.argtypes = [
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.POINTER(_ArgCmp),
        ]
        lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
        _lib = lib
    return _lib


def default_profile() -> dict[str, Any]:
    return load_profile(DEFAULT_PROFILE)


def load_profile(path: str | os.PathLike[str]) -> dict[str, Any]:
    from sandbox import codec

    return codec.read_object(
        path, what=f"seccomp profile {path}", limit=4 << 20, error=ProfileError
    )


def _kernel_version(release: str | None = None) -> tuple[int, int]:
    release = release or os.uname().release
    parts = release.split("-")[0].split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return (0, 0)


def _parse_version(text: object) -> tuple[int, int]:
    if not isinstance(text, str):
        raise ProfileError(f"minKernel {text!r} is not a string like '4.8'")
    parts = text.split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError as e:
        raise ProfileError(f"invalid minKernel {text!r}", hint="use MAJOR.MINOR") from e


def _caps(names: object) -> set[str]:
    if not isinstance(names, list):
        raise ProfileError("includes/excludes caps must be a list of names")
    return {str(n).upper().removeprefix("CAP_") for n in names}


def _applies(
    rule: Mapping[str, Any], caps: set[str], kernel: tuple[int, int], machine: str
) -> bool:
    native_names = _NATIVE.get(machine, ("", (), (machine,)))[2]
    includes = rule.get("includes") or {}
    excludes = rule.get("excludes") or {}
    if not isinstance(includes, dict) or not isinstance(excludes, dict):
        raise ProfileError("includes and excludes must be objects")
    if "caps" in includes and not _caps(includes["caps"]) <= caps:
        return False
    if includes.get("arches") and not set(includes["arches"]) & set(native_names):
        return False
    if includes.get("minKernel") and kernel < _parse_version(includes["minKernel"]):
        return False
    if "caps" in excludes and _caps(excludes["caps"]) & caps:
        return False
    if excludes.get("arches") and set(excludes["arches"]) & set(native_names):
        return False
    return not (excludes.get("minKernel") and kernel >= _parse_version(excludes["minKernel"]))


def _action(name: object, errno_ret: object, where: str) -> int:
    if name == "SCMP_ACT_NOTIFY":
        raise ProfileError(
            f"{where}: SCMP_ACT_NOTIFY needs a seccomp agent, which sandbox does not run",
            hint="use SCMP_ACT_ERRNO or SCMP_ACT_LOG instead",
        )
    if name not in _ACTIONS:
        raise ProfileError(
            f"{where}: unknown action {name!r}", hint="use one of " + ", ".join(_ACTIONS)
        )
    action = _ACTIONS[str(name)]
    if action in (ACT_ERRNO, ACT_TRACE):
        value = errno.EPERM if errno_ret is None else errno_ret
        if not isinstance(value, int) or not 0 <= value <= 0xFFFF:
            raise ProfileError(f"{where}: errnoRet {errno_ret!r} is not a number from 0 to 65535")
        action |= value
    return action


def _conditions(args: object, where: str) -> list[_ArgCmp]:
    if not args:
        return []
    if not isinstance(args, list):
        raise ProfileError(f"{where}: args must be a list")
    result = []
    for arg in args:
        if not isinstance(arg, dict):
            raise ProfileError(f"{where}: each args entry must be an object")
        index, value, two, op = (
            arg.get("index"),
            arg.get("value", 0),
            arg.get("valueTwo", 0),
            arg.get("op"),
        )
        if not isinstance(index, int) or not 0 <= index <= 5:
            raise ProfileError(f"{where}: argument index {index!r} is not 0-5")
        if op not in _OPS:
            raise ProfileError(f"{where}: unknown comparison {op!r}")
        for v in (value, two):
            if not isinstance(v, int) or not 0 <= v < 1 << 64:
                raise ProfileError(f"{where}: argument value {v!r} is not a 64-bit number")
        result.append(_ArgCmp(index, _OPS[str(op)], value, two))
    return result


def architectures(profile: Mapping[str, Any], machine: str | None = None) -> list[str]:
    """The libseccomp arches to filter: the profile's for this machine, or native + its subs."""
    machine = machine or platform.machine()
    native = _NATIVE.get(machine)
    if native is None:
        raise HostError(f"seccomp filtering is not supported on {machine}")
    arch_map = profile.get("archMap") or []
    listed = profile.get("architectures") or []
    if arch_map:
        for entry in arch_map:
            if isinstance(entry, dict) and entry.get("architecture") == native[0]:
                return [native[0], *entry.get("subArchitectures", [])]
        # A profile that maps other machines only: filter ours with everything it can run.
        return [native[0], *native[1]]
    if listed:
        if native[0] not in listed:
            raise ProfileError(
                f"the seccomp profile does not list this machine's architecture ({native[0]})"
            )
        return list(listed)
    return [native[0], *native[1]]


def compile(
    profile: Mapping[str, Any],
    *,
    capabilities: Collection[str],
    kernel: tuple[int, int] | None = None,
    machine: str | None = None,
) -> bytes:
    """The BPF program (struct sock_filter[]) for profile, given the container's capabilities.

    capabilities are names without CAP_ (caps.NAMES). Raises ProfileError for a profile we
    cannot honour, so `sandbox run` fails before any process exists.
    """
    lib = _libseccomp()
    machine = machine or platform.machine()
    kernel = kernel or _kernel_version()
    caps = {c.upper().removeprefix("CAP_") for c in capabilities}
    default = _action(profile.get("defaultAction"), profile.get("defaultErrnoRet"), "defaultAction")
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise ProfileError("libseccomp refused the profile's defaultAction")
    try:
        # The native arch is in a new context already; add the rest, then drop native if
        # the profile does not want it (it always does here: architectures() starts with it).
        for arch in architectures(profile, machine):
            token = ARCHES.get(arch)
            if token is None:
                raise ProfileError(f"unknown architecture {arch!r} in the seccomp profile")
            rc = lib.seccomp_arch_add(ctx, token)
            if rc not in (0, -errno.EEXIST):
                raise ProfileError(f"libseccomp cannot add {arch}", context=os.strerror(-rc))
        for number, rule in enumerate(profile.get("syscalls") or []):
            _add_rule(lib, ctx, rule, default, caps, kernel, machine, f"syscalls[{number}]")
        return _export(lib, ctx)
    finally:
        lib.seccomp_release(ctx)


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]


def compile_cached(
    profile: Mapping[str, Any], *, capabilities: Collection[str], cache_dir: Path
) -> bytes:
    """compile(), remembered in cache_dir (private, per boot) under a hash of every input.

    Why: libseccomp takes about 18 ms to compile the default profile, on every run, for the
    same result. The key covers the profile, the capabilities, the kernel version, the machine
    and the libseccomp version. A cache that cannot be read or written is ignored.
    """
    try:  # the interpreter's own BLAKE2: hashlib would load OpenSSL (~2 ms) for one key
        from _blake2 import blake2b
    except ImportError:  # pragma: no cover - an interpreter built without it
        from hashlib import blake2b

    lib = _libseccomp()
    lib.seccomp_version.restype = ctypes.POINTER(_Version)
    version = lib.seccomp_version().contents
    inputs = [
        profile,
        sorted({c.upper().removeprefix("CAP_") for c in capabilities}),
        _kernel_version(),
        platform.machine(),
        [version.major, version.minor, version.micro],
    ]
    text = json.dumps(inputs, sort_keys=True, default=str).encode()
    key = blake2b(text, digest_size=32).hexdigest()
    path = cache_dir / f"{key}.bpf"
    try:
        st = os.lstat(path)
        if st.st_uid == os.getuid() and st.st_size and st.st_size % 8 == 0:
            return path.read_bytes()
    except OSError:
        pass
    program = compile(profile, capabilities=capabilities)
    try:  # written under a private name, then renamed: a reader sees all of it or nothing
        temporary = cache_dir / f".{key}.{os.getpid()}"
        temporary.write_bytes(program)
        os.rename(temporary, path)
    except OSError:
        pass
    return program


def _add_rule(
    lib: ctypes.CDLL,
    ctx: int,
    rule: object,
    default: int,
    caps: set[str],
    kernel: tuple[int, int],
    machine: str,
    where: str,
) -> None:
    if not isinstance(rule, dict):
        raise ProfileError(f"{where} is not an object")
    names = rule.get("names") or ([rule["name"]] if rule.get("name") else [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ProfileError(f"{where}: names must be a list of syscall names")
    if not _applies(rule, caps, kernel, machine):
        return
    action = _action(rule.get("action"), rule.get("errnoRet"), where)
    if action == default:
        return  # libseccomp refuses rules that change nothing
    conditions = _conditions(rule.get("args"), where)
    # libseccomp wants one comparison per argument in a rule: conditions on the same argument
    # become separate rules (a logical OR), as runc does.
    indexes = [c.arg for c in conditions]
    groups = [[c] for c in conditions] if len(set(indexes)) != len(indexes) else [conditions]
    for name in names:
        number = lib.seccomp_syscall_resolve_name(name.encode())
        if number == _NR_SCMP_ERROR:
            continue  # a syscall this libseccomp (or no architecture) knows
        for group in groups:
            array = (_ArgCmp * max(len(group), 1))(*group)
            rc = lib.seccomp_rule_add_array(ctx, action, number, len(group), array)
            if rc not in (0, -errno.EEXIST):
                raise ProfileError(
                    f"{where}: libseccomp refused the rule for {name}",
                    context=os.strerror(-rc),
                    hint="check the rule's action and args against the profile format",
                )


def _export(lib: ctypes.CDLL, ctx: int) -> bytes:
    fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
    try:
        rc = lib.seccomp_export_bpf(ctx, fd)
        if rc != 0:
            raise ProfileError("libseccomp cannot export the filter", context=os.strerror(-rc))
        size = os.lseek(fd, 0, os.SEEK_END)
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


def flags(profile: Mapping[str, Any]) -> int:
    """seccomp(2) flags the profile asks for (TSYNC is meaningless for one thread; kept)."""
    value = 0
    for name in profile.get("flags") or []:
        if name not in FLAGS:
            raise ProfileError(f"unknown seccomp flag {name!r}", hint=", ".join(FLAGS))
        value |= FLAGS[name]
    return value
