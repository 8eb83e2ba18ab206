"""The Python API: run containers from programs and tests.

    from sandbox import api
    result = api.run("busybox", ["sh", "-c", "echo hi; exit 3"], timeout=30)
    result.exit_code, result.stdout, result.usage.cpu_seconds

    with api.Container.start("busybox", ["sleep", "300"]) as c:
        c.exec(["ls", "/"]).stdout

Every call runs `python -m sandbox` in a subprocess, never in the calling process. The engine
must create its namespaces from a process that never had a thread (the kernel refuses
unshare(CLONE_NEWUSER) in a threaded process, and fork() of a threaded interpreter can
deadlock), and a library cannot prove its caller is single-threaded for the whole time it
runs: a thread started by any import later would break it. subprocess spawns with
fork+exec in C (no Python runs in the child before exec), which is safe from threads. So
the API works from threaded programs, thread pools and asyncio executors alike; the cost is
one interpreter start per call (measured: about 0.45 s wall for `true`).

Resource usage comes from wait4() on that subprocess: the CPU time of sandbox and every
process of the container (they are its descendants and are reaped under it), so it includes
the engine's own start-up (about 0.2 s of CPU here); the peak memory is the largest single
process among them, so it is at least the engine's interpreter (about 24 MiB): an upper
bound for small commands. Cgroup figures are not reported yet (the container's cgroup is
gone when `run --rm` returns).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import resource
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType

from sandbox.errors import ContainerError, SandboxError


class Timeout(SandboxError):
    """The command ran longer than the timeout; the container was removed."""


@dataclasses.dataclass(frozen=True)
class Usage:
    cpu_user_seconds: float
    cpu_system_seconds: float
    max_rss_kib: int  # the largest process's peak (engine included)
    wall_seconds: float

    @property
    def cpu_seconds(self) -> float:
        return self.cpu_user_seconds + self.cpu_system_seconds


@dataclasses.dataclass(frozen=True)
class Result:
    exit_code: int
    stdout: str
    stderr: str
    usage: Usage

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def _argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "sandbox", *args]


def _environ(engine_env: Mapping[str, str] | None) -> dict[str, str]:
    """The engine's environment: ours, with engine_env's settings (XDG dirs, ...) on top."""
    return {**os.environ, **(engine_env or {})}


def _run_options(
    *,
    env: Mapping[str, str] | Sequence[str] | None,
    volumes: Sequence[str],
    network: str | None,
    user: str | None,
    workdir: str | None,
    extra: Sequence[str],
) -> list[str]:
    args: list[str] = []
    items = [f"{k}={v}" for k, v in env.items()] if isinstance(env, Mapping) else list(env or ())
    for item in items:
        args += ["-e", item]
    for volume in volumes:
        args += ["-v", volume]
    if network is not None:
        args += ["--network", network]
    if user is not None:
        args += ["--user", user]
    if workdir is not None:
        args += ["--workdir", workdir]
    return args + list(extra)


def _usage(process: subprocess.Popen[str], began: float) -> Usage:
    rusage = getattr(process, "_sandbox_rusage", None)
    wall = time.monotonic() - began
    if rusage is None:
        return Usage(0.0, 0.0, 0, wall)
    return Usage(rusage.ru_utime, rusage.ru_stime, int(rusage.ru_maxrss), wall)


class _Popen(subprocess.Popen[str]):
    """Popen that reaps with wait4(), keeping the child's resource usage (and its waited-for
    descendants': the container's processes)."""

    _sandbox_rusage: resource.struct_rusage | None = None

    def _try_wait(self, wait_flags: int) -> tuple[int, int]:
        try:
            pid, status, rusage = os.wait4(self.pid, wait_flags)
        except ChildProcessError:
            return self.pid, 0
        if pid == self.pid:
            self._sandbox_rusage = rusage
        return pid, status


def run(
    image: str,
    command: Sequence[str] = (),
    *,
    env: Mapping[str, str] | Sequence[str] | None = None,
    volumes: Sequence[str] = (),
    network: str | None = None,
    user: str | None = None,
    workdir: str | None = None,
    timeout: float | None = None,
    input: str | None = None,
    extra_args: Sequence[str] = (),
    engine_env: Mapping[str, str] | None = None,
) -> Result:
    """Run command in a throwaway container of image and wait for it.

    exit_code is the command's (125: the engine failed, 126/127: not executable/not found).
    A failure of the engine itself (bad image, bad option) raises ContainerError with the
    engine's message. extra_args are more `sandbox run` options (["--memory", "64m"]).
    """
    name = f"api-{secrets.token_hex(6)}"
    options = _run_options(
        env=env, volumes=volumes, network=network, user=user, workdir=workdir, extra=extra_args
    )
    argv = _argv("run", "--rm", "--name", name, *(["-i"] if input is not None else []))
    argv += [*options, image, *command]
    result = _spawn(argv, engine_env, timeout, input, on_timeout=("rm", "-f", name))
    _raise_engine_error(result)
    return result


def _spawn(
    argv: list[str],
    engine_env: Mapping[str, str] | None,
    timeout: float | None,
    input: str | None = None,
    on_timeout: Sequence[str] = (),
) -> Result:
    """Run one engine command: its output, status and rusage, and a timeout that cleans up."""
    began = time.monotonic()
    environ = _environ(engine_env)
    process = _Popen(
        argv,
        env=environ,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # the caller's ^C is for the caller to handle, not the engine
    )
    try:
        stdout, stderr = process.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        if on_timeout:
            # Removing the container ends its PID 1, and the engine finishes its --rm.
            subprocess.run(
                _argv(*on_timeout), env=environ, capture_output=True, timeout=30, check=False
            )
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.communicate(timeout=10)
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
        raise Timeout(
            f"the container ran longer than {timeout:g}s and was removed",
            hint="raise timeout=, or make the command finish sooner",
        ) from None
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise
    return Result(process.returncode, stdout, stderr, _usage(process, began))


def _raise_engine_error(result: Result) -> None:
    if result.exit_code == 125 and result.stderr.startswith("Error: "):
        lines = result.stderr.splitlines()
        hint = next((line[6:] for line in lines if line.startswith("Hint: ")), None)
        raise ContainerError(lines[0][7:], hint=hint)


class Container:
    """A detached container: start, exec, logs, stop, remove (or use it as a context manager,
    which removes it on exit)."""

    def __init__(self, id: str, name: str, engine_env: Mapping[str, str] | None = None) -> None:
        self.id = id
        self.name = name
        self.engine_env = dict(engine_env or {})

    @classmethod
    def start(
        cls,
        image: str,
        command: Sequence[str] = (),
        *,
        name: str | None = None,
        env: Mapping[str, str] | Sequence[str] | None = None,
        volumes: Sequence[str] = (),
        network: str | None = None,
        user: str | None = None,
        workdir: str | None = None,
        extra_args: Sequence[str] = (),
        engine_env: Mapping[str, str] | None = None,
        timeout: float | None = 120,
    ) -> Container:
        name = name or f"api-{secrets.token_hex(6)}"
        options = _run_options(
            env=env,
            volumes=volumes,
            network=network,
            user=user,
            workdir=workdir,
            extra=extra_args,
        )
        argv = _argv("run", "-d", "--name", name, *options, image, *command)
        result = _spawn(argv, engine_env, timeout)
        _raise_engine_error(result)
        if result.exit_code != 0:
            raise ContainerError(f"cannot start a container of {image}", context=result.stderr)
        return cls(result.stdout.strip(), name, engine_env)

    def _call(self, *args: str, timeout: float | None = 60) -> Result:
        return _spawn(_argv(*args), self.engine_env, timeout)

    def exec(
        self,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | Sequence[str] | None = None,
        user: str | None = None,
        workdir: str | None = None,
        timeout: float | None = None,
    ) -> Result:
        """Run command in the container; its output and exit code (usage: of the exec)."""
        options = _run_options(
            env=env, volumes=(), network=None, user=user, workdir=workdir, extra=()
        )
        result = _spawn(_argv("exec", *options, self.id, *command), self.engine_env, timeout)
        _raise_engine_error(result)
        return result

    def logs(self) -> str:
        result = self._call("logs", self.id)
        _raise_engine_error(result)
        return result.stdout

    def stop(self, timeout: int = 10) -> None:
        result = self._call("stop", "-t", str(timeout), self.id, timeout=timeout + 30)
        _raise_engine_error(result)

    def remove(self) -> None:
        """Stop (kill) and delete the container."""
        result = self._call("rm", "-f", self.id)
        _raise_engine_error(result)

    def __enter__(self) -> Container:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(SandboxError):
            self.remove()


@contextlib.contextmanager
def container(image: str, command: Sequence[str] = (), **options: object) -> Iterator[Container]:
    """with api.container("busybox", ["sleep", "300"]) as c: ... (removed afterwards)."""
    with Container.start(image, command, **options) as c:  # type: ignore[arg-type]
        yield c
