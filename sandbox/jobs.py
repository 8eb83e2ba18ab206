"""CI jobs: a job's steps from sandbox.yaml, run in order in one fresh container.

The container is started detached with a long sleep as its command, and each step is a
`sh -c STEP` exec'd into it (runtime/exec.py), so a step sees what earlier steps left in
the filesystem, and each step's exit code and time are known exactly. The first failing step
ends the job with its code; the container is removed whatever happens. Nothing reads stdin:
a job never prompts.

Events (--json-events) are JSON objects, one per line, each with "event" and "time":
  pull        {image, status: start|blob|done|cached, digest?, size?, seconds?}
  start       {job, image, container, steps}
  step_start  {index, name, command}
  step_end    {index, name, exit_code, seconds}
  exit        {exit_code, failed_step (index or null), seconds}
  resources   {cpu_user_seconds, cpu_system_seconds, max_rss_kib, wall_seconds, cgroup?}
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from sandbox.config import Settings
from sandbox.errors import SandboxError
from sandbox.project import Job, Project, Step

# The container's command while the steps run: present in any image with a POSIX userland.
KEEPALIVE = ("sleep", "2147483647")


class Events:
    """Where a job's events go: JSON lines on a stream, or nowhere."""

    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream
        self._lock = threading.Lock()  # pull progress arrives from download threads
        self.seen: list[dict[str, Any]] = []

    def emit(self, event: str, **fields: Any) -> None:
        record = {"event": event, "time": round(time.time(), 3), **fields}
        with self._lock:
            self.seen.append(record)
            if self.stream is not None:
                self.stream.write(json.dumps(record) + "\n")
                self.stream.flush()


class PullEvents:
    """images/pull.py's Progress protocol, turned into pull events."""

    def __init__(self, events: Events, image: str) -> None:
        self.events = events
        self.image = image

    def message(self, text: str) -> None:
        pass

    def start(self, digest: str, size: int) -> None:
        self.events.emit("pull", image=self.image, status="blob", digest=digest, size=size)

    def advance(self, digest: str, amount: int) -> None:
        pass

    def finish(self, digest: str, skipped: bool = False) -> None:
        status = "blob_skipped" if skipped else "blob_done"
        self.events.emit("pull", image=self.image, status=status, digest=digest)

    def close(self) -> None:
        pass


@dataclasses.dataclass(frozen=True)
class Style:
    """How step headers look: colours only on a terminal outside CI, or when forced."""

    colour: bool

    @classmethod
    def detect(cls, stream: TextIO, force: bool | None = None) -> Style:
        if force is not None:
            return cls(force)
        if os.environ.get("NO_COLOR"):
            return cls(False)
        if os.environ.get("FORCE_COLOR"):
            return cls(True)
        return cls(stream.isatty() and not in_ci())

    def header(self, text: str) -> str:
        return f"\033[1;36m{text}\033[0m" if self.colour else text

    def bad(self, text: str) -> str:
        return f"\033[1;31m{text}\033[0m" if self.colour else text


def in_ci() -> bool:
    """Most CI systems set CI; GitLab, GitHub, Jenkins and Buildkite set their own too."""
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        return True
    return any(
        os.environ.get(k)
        for k in ("GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL", "BUILDKITE", "TF_BUILD")
    )


@dataclasses.dataclass(frozen=True)
class StepResult:
    index: int
    name: str
    exit_code: int
    seconds: float


@dataclasses.dataclass(frozen=True)
class JobResult:
    exit_code: int
    steps: tuple[StepResult, ...]
    failed_step: int | None
    seconds: float


def steps_of(project: Project, job: Job) -> list[Step]:
    """setup: commands first (named "setup"), then the job's own steps."""
    setup = [Step(run=c, name=f"setup: {c}"[:60]) for c in project.setup]
    return setup + list(job.steps)


def run_options(project: Project, job: Job, *, pull: str = "missing") -> Any:
    """The RunOptions of the job's container (the steps are exec'd into it)."""
    from sandbox.rootless import cgroups
    from sandbox.spec import RunOptions

    caches = dict(project.caches)
    caches.update(dict(job.caches))
    limits = (job.resources or project.resources).as_options()
    return RunOptions(
        image=project.image_for(job),
        command=KEEPALIVE,
        env=project.env + job.env,
        workdir=job.workdir or project.workdir or project.project_mount,
        volumes=project.mounts() + tuple(f"{name}:{path}" for name, path in caches.items()),
        network=project.network,
        publish=project.ports,
        resources=cgroups.from_options(**limits),
        pull=pull,
        detach=True,
    )


def run(
    settings: Settings,
    project: Project,
    job_name: str,
    *,
    events: Events,
    out: TextIO = sys.stderr,
    style: Style | None = None,
    pull: str = "missing",
) -> JobResult:
    """Run job_name's steps; return when the first step fails or all succeed."""
    from sandbox.images import pull as pulls
    from sandbox.runtime import container as engine
    from sandbox.runtime import exec as execs
    from sandbox.runtime import monitor
    from sandbox.runtime.state import ContainerStore

    style = style or Style.detect(out)
    job = project.job(job_name)
    steps = steps_of(project, job)
    options = run_options(project, job, pull=pull)
    began = time.monotonic()
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)

    def warn(message: str) -> None:
        print(f"Warning: {message}", file=out, flush=True)

    mapping = engine.mapping_for(settings, None, warn)
    pull_began = time.monotonic()
    events.emit("pull", image=options.image, status="start")
    pulls.ensure_image(
        settings, mapping, options.image, policy=pull, progress=PullEvents(events, options.image)
    )
    events.emit("pull", image=options.image, status="done", seconds=_since(pull_began))
    # The image is in the store now: create must not pull it again.
    options = dataclasses.replace(options, pull="missing" if pull != "never" else "never")
    spec, record = engine.create(settings, options, warn=warn)
    store = ContainerStore(settings.containers_root)
    results: list[StepResult] = []
    failed: int | None = None
    code = 0
    try:
        monitor.start(store, spec, record)
        events.emit(
            "start", job=job.name, image=options.image, container=record.name, steps=len(steps)
        )
        for index, step in enumerate(steps, 1):
            print(style.header(f"==> [{index}/{len(steps)}] {step.name}"), file=out, flush=True)
            events.emit("step_start", index=index, name=step.name, command=step.run)
            started = time.monotonic()
            with _stdout_to(out):
                code = execs.run(
                    settings,
                    record.id,
                    execs.ExecOptions(
                        command=("sh", "-c", step.run), env=step.env, workdir=step.workdir
                    ),
                )
            seconds = _since(started)
            results.append(StepResult(index, step.name, code, seconds))
            events.emit("step_end", index=index, name=step.name, exit_code=code, seconds=seconds)
            verdict = "ok" if code == 0 else style.bad(f"failed with exit code {code}")
            print(
                f"<== [{index}/{len(steps)}] {step.name}: {verdict} in {seconds:.2f}s",
                file=out,
                flush=True,
            )
            if code != 0:
                failed = index
                break
        cgroup = _cgroup_summary(store, record.id)
    finally:
        with contextlib.suppress(SandboxError):
            engine.remove(settings, record.id, force=True, warn=warn)
    total = _since(began)
    events.emit("exit", exit_code=code, failed_step=failed, seconds=total)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    summary: dict[str, Any] = {
        "cpu_user_seconds": round(usage.ru_utime - usage_before.ru_utime, 3),
        "cpu_system_seconds": round(usage.ru_stime - usage_before.ru_stime, 3),
        "max_rss_kib": usage.ru_maxrss,
        "wall_seconds": total,
    }
    if cgroup is not None:
        summary["cgroup"] = cgroup
    events.emit("resources", **summary)
    return JobResult(code, tuple(results), failed, total)


def _cgroup_summary(store: Any, container_id: str) -> dict[str, Any] | None:
    """Memory, CPU and pids from the container's cgroup, when it has one."""
    record = store.lookup(container_id)
    if not record.cgroup_path:
        return None
    from sandbox.runtime import stats

    try:
        sample = stats.sample(record)
    except (OSError, SandboxError):
        return None
    return {"cpu_usec": sample.cpu_usec, "memory": sample.memory, "pids": sample.pids}


@contextlib.contextmanager
def _stdout_to(stream: TextIO) -> Iterator[None]:
    """A step's output goes where step headers go (stderr under --json-events, which owns
    stdout); the exec'd process inherits fd 1, so swap the fd itself."""
    if stream is sys.stdout:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(stream.fileno(), 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _since(began: float) -> float:
    return round(time.monotonic() - began, 3)


Emitter = Callable[..., None]
