"""Native helper programs: shipped as C source, compiled on first use into the user's cache.

There are two. monitor.c is the long-running part of a detached container's monitor
(runtime/monitor.py execs it once the container runs, so an idle container costs a few hundred
KiB instead of a Python interpreter). pause.c is PID 1 of a played pod's infra container
(sandbox/kube.py), linked statically so that it alone is that container's root filesystem
(`pause_rootfs`). Each is built with the system C compiler (`cc` on PATH)
into $XDG_CACHE_HOME/sandbox/libexec/ (default ~/.cache), under a name keyed by a hash of the
source and of the compiler (its resolved path, size and mtime: a compiler upgrade changes them,
and no `cc --version` run is needed on every start). The compiler writes a temporary name that
is renamed into place, so concurrent first runs are safe. A failed build is remembered (next to
where the program would be) so that it is not retried on every start.

Without a compiler (or with SANDBOX_MONITOR=python in the environment) the monitor stays in
Python: it works the same, it only costs more memory. `sandbox doctor` says which is in use.
Without a compiler (or libc.a, for the static link) there is no pause program, and `kube play`
says so (as does `sandbox doctor`): an infra container from a pod's own images would depend on
what they ship.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pwd
import shutil
import stat
from pathlib import Path

SOURCE = Path(__file__).parent / "monitor.c"
PAUSE_SOURCE = Path(__file__).parent / "pause.c"
ENV = "SANDBOX_MONITOR"  # "python" forces the Python monitor; unset or "native" builds the C one
CFLAGS = (
    "-O2",
    "-Wall",
    "-Wextra",
    "-Wformat=2",
    "-D_FORTIFY_SOURCE=2",
    "-fstack-protector-strong",
)
BUILD_TIMEOUT = 120.0
INSTALL_HINT = "install a C compiler ('apt install gcc libc6-dev') for the small native monitor"
PAUSE_HINT = "install a C compiler and a static libc ('apt install gcc libc6-dev')"
# What the pause rootfs holds besides /pause: the mount points every container gets, made here
# once so that concurrent infra containers never race to create them in the shared directory.
_PAUSE_DIRS = ("dev", "etc", "proc", "sys", "run", "tmp", "var", "var/tmp")
_PAUSE_FILES = ("etc/hostname", "etc/hosts", "etc/resolv.conf")


@dataclasses.dataclass(frozen=True)
class _Program:
    name: str  # the installed name's prefix: sandbox-NAME-KEY
    source: Path
    flags: tuple[str, ...] = ()  # beyond CFLAGS; part of the key
    check: tuple[str, ...] = ()  # arguments that make it print its usage and exit 125


_MONITOR = _Program("monitor", SOURCE)
_PAUSE = _Program("pause", PAUSE_SOURCE, flags=("-static",), check=("--usage",))


def cache_dir() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        home = Path(xdg)
    else:
        home = Path(os.environ.get("HOME") or pwd.getpwuid(os.getuid()).pw_dir) / ".cache"
    return home / "sandbox" / "libexec"


def _compiler() -> tuple[str, str] | None:
    """cc's path and an identity of it that changes when it is upgraded."""
    found = shutil.which("cc")
    if found is None:
        return None
    real = os.path.realpath(found)
    try:
        st = os.stat(real)
    except OSError:
        return None
    return found, f"{real}:{st.st_size}:{st.st_mtime_ns}"


def _owned_by_us(path: Path, kind: int = stat.S_IFREG) -> bool:
    """Only a program no one else could have written is run (the cache may be shared)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_IFMT(st.st_mode) == kind and st.st_uid == os.getuid() and not st.st_mode & 0o022


def monitor_program(*, build: bool = True) -> tuple[Path | None, str]:
    """The compiled monitor (built now if needed and build is true), or None and why not."""
    if os.environ.get(ENV, "native") == "python":
        return None, f"{ENV}=python is set"
    return _program(_MONITOR, build=build, builder="the first detached container")


def pause_program(*, build: bool = True) -> tuple[Path | None, str]:
    """The compiled, statically linked pause program, or None and why not."""
    return _program(_PAUSE, build=build, builder="the first `kube play`")


def pause_rootfs() -> tuple[Path | None, str]:
    """A root filesystem holding only /pause (and empty mount points), for `run --rootfs`:
    built next to the program on first use, or None and why not. Owned by the user (the
    infra container's root maps to the user), and used read-only by every infra container."""
    program, why = pause_program()
    if program is None:
        return None, why
    rootfs = program.with_name(f"{program.name}.rootfs")
    if _owned_by_us(rootfs, stat.S_IFDIR) and _owned_by_us(rootfs / "pause"):
        return rootfs, str(rootfs)
    temporary = program.with_name(f".{program.name}.rootfs.{os.getpid()}.tmp")
    try:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(temporary)
        temporary.mkdir(mode=0o755)
        for directory in _PAUSE_DIRS:
            (temporary / directory).mkdir(mode=0o755)
        for file in _PAUSE_FILES:
            (temporary / file).touch(mode=0o644)
        shutil.copyfile(program, temporary / "pause")
        os.chmod(temporary / "pause", 0o555)
        try:  # a concurrent first play may have put its own in place: that one is as good
            os.rename(temporary, rootfs)
        except OSError:
            if not _owned_by_us(rootfs, stat.S_IFDIR):
                raise
            shutil.rmtree(temporary, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(temporary, ignore_errors=True)
        return None, f"cannot make {rootfs}: {e.strerror or e}"
    return rootfs, str(rootfs)


def _program(what: _Program, *, build: bool, builder: str) -> tuple[Path | None, str]:
    compiler = _compiler()
    if compiler is None:
        return None, "no C compiler ('cc') on PATH"
    cc, identity = compiler
    try:
        source = what.source.read_bytes()
    except OSError as e:
        return None, f"cannot read {what.source}: {e.strerror}"
    try:  # the builtin module: hashlib would load OpenSSL on every `run -d`
        from _blake2 import blake2b
    except ImportError:  # pragma: no cover - Pythons built without it
        from hashlib import blake2b
    # The monitor's key leaves out its (empty) extra flags: built monitors stay valid.
    keyed = source + b"\0" + identity.encode() + "".join(what.flags).encode()
    key = blake2b(keyed, digest_size=8).hexdigest()
    directory = cache_dir()
    program = directory / f"sandbox-{what.name}-{key}"
    if _owned_by_us(program):
        if not os.access(program, os.X_OK):
            return None, f"cannot execute {program} (is {directory} mounted noexec?)"
        return program, str(program)
    failed = directory / f"sandbox-{what.name}-{key}.failed"
    if failed.exists():
        return None, f"building it failed before (see {failed})"
    if not build:
        return None, f"not built yet ({builder} builds {program})"
    return _build(cc, what, program, failed)


def _build(cc: str, what: _Program, program: Path, failed: Path) -> tuple[Path | None, str]:
    import subprocess

    try:
        program.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        return None, f"cannot create {program.parent}: {e.strerror}"
    temporary = program.with_name(f".{program.name}.{os.getpid()}.tmp")
    argv = [cc, *CFLAGS, *what.flags, "-o", str(temporary), str(what.source)]
    try:
        result = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=BUILD_TIMEOUT, check=False
        )
        if result.returncode == 0:
            os.chmod(temporary, 0o755)
            try:  # it must run here (a noexec cache would kill every detached container)
                usage = subprocess.run(
                    [temporary, *what.check],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=BUILD_TIMEOUT,
                )
            except OSError as e:
                os.unlink(temporary)
                failed.write_text(f"{temporary}: {e}\n")
                return None, f"cannot execute what cc built in {program.parent}: {e.strerror}"
            if usage.returncode != 125:  # its usage message: it runs
                raise OSError(f"{temporary} exited {usage.returncode} instead of 125")
            # Rename into place: a concurrent first run sees no program or the whole of it.
            os.replace(temporary, program)
            return program, str(program)
    except (OSError, subprocess.TimeoutExpired) as e:
        # Not remembered: a busy machine or a full disk may do better next time.
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        return None, f"cannot build {program}: {e}"
    with contextlib.suppress(OSError):
        os.unlink(temporary)
    with contextlib.suppress(OSError):
        output = (result.stdout + result.stderr).decode(errors="replace")
        failed.write_text(f"{' '.join(argv)}\n{output}")
    return None, f"'{cc}' could not build {what.source.name} (see {failed})"
