"""Native helper programs: shipped as C source, compiled on first use into the user's cache.

Today there is one, monitor.c, the long-running part of a detached container's monitor
(runtime/monitor.py execs it once the container runs, so an idle container costs a few hundred
KiB instead of a Python interpreter). It is built with the system C compiler (`cc` on PATH)
into $XDG_CACHE_HOME/sandbox/libexec/ (default ~/.cache), under a name keyed by a hash of the
source and of the compiler (its resolved path, size and mtime: a compiler upgrade changes them,
and no `cc --version` run is needed on every start). The compiler writes a temporary name that
is renamed into place, so concurrent first runs are safe. A failed build is remembered (next to
where the program would be) so that it is not retried on every start.

Without a compiler (or with SANDBOX_MONITOR=python in the environment) the monitor stays in
Python: it works the same, it only costs more memory. `sandbox doctor` says which is in use.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import stat
from pathlib import Path

SOURCE = Path(__file__).parent / "monitor.c"
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


def _owned_by_us(path: Path) -> bool:
    """Only a program no one else could have written is run (the cache may be shared)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o022


def monitor_program(*, build: bool = True) -> tuple[Path | None, str]:
    """The compiled monitor (built now if needed and build is true), or None and why not."""
    if os.environ.get(ENV, "native") == "python":
        return None, f"{ENV}=python is set"
    compiler = _compiler()
    if compiler is None:
        return None, "no C compiler ('cc') on PATH"
    cc, identity = compiler
    try:
        source = SOURCE.read_bytes()
    except OSError as e:
        return None, f"cannot read {SOURCE}: {e.strerror}"
    try:  # the builtin module: hashlib would load OpenSSL on every `run -d`
        from _blake2 import blake2b
    except ImportError:  # pragma: no cover - Pythons built without it
        from hashlib import blake2b
    key = blake2b(source + b"\0" + identity.encode(), digest_size=8).hexdigest()
    directory = cache_dir()
    program = directory / f"sandbox-monitor-{key}"
    if _owned_by_us(program):
        if not os.access(program, os.X_OK):
            return None, f"cannot execute {program} (is {directory} mounted noexec?)"
        return program, str(program)
    failed = directory / f"sandbox-monitor-{key}.failed"
    if failed.exists():
        return None, f"building it failed before (see {failed})"
    if not build:
        return None, f"not built yet (the first detached container builds {program})"
    return _build(cc, program, failed)


def _build(cc: str, program: Path, failed: Path) -> tuple[Path | None, str]:
    import subprocess

    try:
        program.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        return None, f"cannot create {program.parent}: {e.strerror}"
    temporary = program.with_name(f".{program.name}.{os.getpid()}.tmp")
    argv = [cc, *CFLAGS, "-o", str(temporary), str(SOURCE)]
    try:
        result = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=BUILD_TIMEOUT, check=False
        )
        if result.returncode == 0:
            os.chmod(temporary, 0o755)
            try:  # it must run here (a noexec cache would kill every detached container)
                usage = subprocess.run(
                    [temporary],
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
    return None, f"'{cc}' could not build {SOURCE.name} (see {failed})"
