"""The project file, sandbox.yaml: what a project's containers, jobs and dev shells look like.

A project file is found in the working directory or the nearest parent that has one (as git
finds .git), or named with -f. It is parsed with pyyaml's node API so that every error names
the file, the line and the key ("sandbox.yaml:7: jobs.test.steps[1].run: must be a string").
Unknown keys are errors: a typo must not silently drop a setting. The result is a frozen
Project; nothing here starts a container.

    image: busybox                 # required (or per job)
    workdir: /work                 # default: the project mount
    project_mount: /work           # where the project directory is mounted; false: nowhere
    env: {KEY: value}              # or a list of KEY=VALUE
    volumes: [./data:/data:ro, cache:/root/.cache]   # relative paths are the project's
    caches: {pip: /root/.cache/pip}                   # named volumes kept between runs
    network: slirp4netns
    ports: ["8080:80"]
    resources: {memory: 512m, cpus: 1.5, pids_limit: 200}
    setup: [apk add git]           # run before every job's steps, in the same container
    jobs:
      test:
        image: debian              # optional override; also env, workdir, caches, resources
        steps:
          - echo one
          - run: make test
            name: tests
            env: {CI: "1"}
            workdir: /work/src
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sandbox.errors import ConfigError

FILENAMES = ("sandbox.yaml", "sandbox.yml")
DEFAULT_MOUNT = "/work"
_JOB_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class Resources:
    """Limits in `sandbox run`'s own words (validated by cgroups.from_options at run time)."""

    memory: str | None = None
    memory_swap: str | None = None
    cpus: str | None = None
    pids_limit: int | None = None

    def as_options(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclasses.dataclass(frozen=True)
class Step:
    run: str
    name: str
    env: tuple[str, ...] = ()
    workdir: str | None = None
    line: int = 0  # where it is defined, for messages


@dataclasses.dataclass(frozen=True)
class Job:
    name: str
    steps: tuple[Step, ...]
    image: str | None = None
    env: tuple[str, ...] = ()
    workdir: str | None = None
    caches: tuple[tuple[str, str], ...] = ()  # (volume name, container path)
    resources: Resources | None = None
    line: int = 0


@dataclasses.dataclass(frozen=True)
class Project:
    path: Path  # the sandbox.yaml
    image: str | None = None
    env: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()  # -v strings, host paths made absolute
    caches: tuple[tuple[str, str], ...] = ()
    workdir: str | None = None
    project_mount: str | None = DEFAULT_MOUNT
    network: str | None = None
    ports: tuple[str, ...] = ()
    resources: Resources = Resources()
    setup: tuple[str, ...] = ()
    jobs: dict[str, Job] = dataclasses.field(default_factory=dict)

    @property
    def directory(self) -> Path:
        return self.path.parent

    def job(self, name: str) -> Job:
        if name not in self.jobs:
            known = ", ".join(sorted(self.jobs)) or "(none)"
            raise ConfigError(
                f"no job {name!r} in {self.path}", hint=f"jobs defined there: {known}"
            )
        return self.jobs[name]

    def image_for(self, job: Job | None) -> str:
        image = (job.image if job else None) or self.image
        if not image:
            where = f"jobs.{job.name}.image or " if job else ""
            raise ConfigError(
                f"{self.path}: no image", hint=f"set {where}image: in {self.path.name}"
            )
        return image

    def mounts(self) -> tuple[str, ...]:
        """Every -v string a container of this project gets: project dir, volumes."""
        out = []
        if self.project_mount:
            out.append(f"{self.directory}:{self.project_mount}")
        out += self.volumes
        return tuple(out)


def find(start: Path | None = None) -> Path:
    """The sandbox.yaml in start (default: the working directory) or its nearest parent."""
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        for name in FILENAMES:
            candidate = directory / name
            if candidate.is_file():
                return candidate
    raise ConfigError(
        f"no sandbox.yaml in {here} or its parents",
        hint="create one (see docs/project-file.md), or name it with -f FILE",
    )


def load(path: Path | None = None) -> Project:
    """Read and check a project file (found with find() when path is None)."""
    path = find() if path is None else path.resolve()
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {path}", context=e.strerror) from e
    return parse(text, path)


# --- the checker: walks yaml nodes, so each error has the node's line ------------------------


class _Checker:
    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, node: Any, key: str, message: str, hint: str | None = None) -> ConfigError:
        line = node.start_mark.line + 1 if node is not None else "?"
        where = f"{self.path}:{line}: {key}" if key else f"{self.path}:{line}"
        return ConfigError(f"{where}: {message}", hint=hint)

    def mapping(
        self, node: Any, key: str, allowed: dict[str, Callable[[Any, str], Any]]
    ) -> dict[str, tuple[Any, Any]]:
        """{key: (value node, checked value)}; unknown or duplicate keys are errors."""
        import yaml

        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, key, f"must be a mapping, not {_kind(node)}")
        out: dict[str, tuple[Any, Any]] = {}
        for knode, vnode in node.value:
            name = knode.value if isinstance(knode, yaml.ScalarNode) else None
            full = f"{key}.{name}" if key else str(name)
            if name not in allowed:
                known = ", ".join(sorted(allowed))
                raise self.fail(knode, full, "unknown key", hint=f"known keys here: {known}")
            if name in out:
                raise self.fail(knode, full, "given twice")
            out[name] = (vnode, allowed[name](vnode, full))
        return out

    def scalar(self, node: Any) -> Any:
        import yaml

        if not isinstance(node, yaml.ScalarNode):
            return None
        return yaml.SafeLoader("").construct_object(node)

    def string(self, node: Any, key: str) -> str:
        import yaml

        # The scalar's own text: `- true` is the command true, `cpus: 1.50` stays "1.50".
        if not isinstance(node, yaml.ScalarNode) or self.scalar(node) is None:
            raise self.fail(node, key, f"must be a string, not {_kind(node)}")
        return str(node.value)

    def absolute(self, node: Any, key: str) -> str:
        value = self.string(node, key)
        if not value.startswith("/"):
            raise self.fail(node, key, f"{value!r} must be an absolute container path")
        return value

    def strings(self, node: Any, key: str) -> tuple[str, ...]:
        import yaml

        if isinstance(node, yaml.ScalarNode) and self.scalar(node) is None:
            return ()
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, key, f"must be a list of strings, not {_kind(node)}")
        return tuple(self.string(item, f"{key}[{i}]") for i, item in enumerate(node.value))

    def env(self, node: Any, key: str) -> tuple[str, ...]:
        import yaml

        if isinstance(node, yaml.SequenceNode):
            out = []
            for i, item in enumerate(node.value):
                entry = self.string(item, f"{key}[{i}]")
                name, eq, _ = entry.partition("=")
                if not eq or not _ENV_KEY_RE.match(name):
                    raise self.fail(item, f"{key}[{i}]", f"{entry!r} is not KEY=VALUE")
                out.append(entry)
            return tuple(out)
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, key, f"must be a mapping of KEY: value, not {_kind(node)}")
        out = []
        for knode, vnode in node.value:
            name = self.string(knode, key)
            if not _ENV_KEY_RE.match(name):
                raise self.fail(knode, f"{key}.{name}", "is not a valid variable name")
            value = self.scalar(vnode)
            if not isinstance(vnode, yaml.ScalarNode):
                raise self.fail(vnode, f"{key}.{name}", f"must be a string, not {_kind(vnode)}")
            if isinstance(value, bool):
                text = "true" if value else "false"
            else:
                text = "" if value is None else str(value)
            out.append(f"{name}={text}")
        return tuple(out)

    def caches(self, node: Any, key: str) -> tuple[tuple[str, str], ...]:
        import yaml

        from sandbox.volumes import validate_name

        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, key, f"must be a mapping of NAME: /path, not {_kind(node)}")
        out = []
        for knode, vnode in node.value:
            name = self.string(knode, key)
            try:
                validate_name(name)
            except ConfigError as e:
                raise self.fail(knode, f"{key}.{name}", e.message, hint=e.hint) from e
            out.append((name, self.absolute(vnode, f"{key}.{name}")))
        return tuple(out)

    def resources(self, node: Any, key: str) -> Resources:
        def size(n: Any, k: str) -> str:
            return self.string(n, k)

        def count(n: Any, k: str) -> int:
            value = self.scalar(n)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise self.fail(n, k, f"must be a positive whole number, not {_kind(n)}")
            return value

        fields = self.mapping(
            node,
            key,
            {"memory": size, "memory_swap": size, "cpus": size, "pids_limit": count},
        )
        return Resources(**{k: v for k, (_, v) in fields.items()})

    def step(self, node: Any, key: str) -> Step:
        import yaml

        line = node.start_mark.line + 1
        if isinstance(node, yaml.ScalarNode):
            command = self.string(node, key)
            return Step(run=command, name=_short(command), line=line)
        fields = self.mapping(
            node,
            key,
            {"run": self.string, "name": self.string, "env": self.env, "workdir": self.absolute},
        )
        if "run" not in fields:
            raise self.fail(node, key, "a step needs run: COMMAND")
        values = {k: v for k, (_, v) in fields.items()}
        values.setdefault("name", _short(values["run"]))
        return Step(line=line, **values)

    def job(self, node: Any, key: str) -> Job:
        import yaml

        def steps(n: Any, k: str) -> tuple[Step, ...]:
            if not isinstance(n, yaml.SequenceNode) or not n.value:
                raise self.fail(n, k, "must be a non-empty list of steps")
            return tuple(self.step(item, f"{k}[{i}]") for i, item in enumerate(n.value))

        fields = self.mapping(
            node,
            key,
            {
                "steps": steps,
                "image": self.string,
                "env": self.env,
                "workdir": self.absolute,
                "caches": self.caches,
                "resources": self.resources,
            },
        )
        if "steps" not in fields:
            raise self.fail(node, key, "a job needs steps:")
        values = {k: v for k, (_, v) in fields.items()}
        return Job(name=key.rpartition(".")[2], line=node.start_mark.line + 1, **values)

    def jobs(self, node: Any, key: str) -> dict[str, Job]:
        import yaml

        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, key, f"must be a mapping of job names, not {_kind(node)}")
        out: dict[str, Job] = {}
        for knode, vnode in node.value:
            name = self.string(knode, key)
            if not _JOB_NAME_RE.match(name):
                raise self.fail(knode, f"{key}.{name}", "job names are letters, digits, _ . -")
            if name in out:
                raise self.fail(knode, f"{key}.{name}", "given twice")
            out[name] = self.job(vnode, f"{key}.{name}")
        return out

    def project_mount(self, node: Any, key: str) -> str | None:
        if self.scalar(node) is False:
            return None
        return self.absolute(node, key)

    def volumes(self, node: Any, key: str) -> tuple[str, ...]:
        import yaml

        out = []
        for i, item in enumerate(node.value if isinstance(node, yaml.SequenceNode) else []):
            text = self.string(item, f"{key}[{i}]")
            source, sep, rest = text.partition(":")
            if not sep or not rest.startswith("/"):
                raise self.fail(
                    item,
                    f"{key}[{i}]",
                    f"{text!r} is not SOURCE:/PATH[:ro]",
                    hint="SOURCE is a path (relative to the project) or a volume name",
                )
            if source.startswith((".", "~")) or "/" in source:
                host = Path(source).expanduser()
                if not host.is_absolute():
                    host = self.path.parent / host
                text = f"{host.resolve()}:{rest}"
            out.append(text)
        if not isinstance(node, yaml.SequenceNode):
            self.strings(node, key)  # raises the "list of strings" error
        return tuple(out)


def parse(text: str, path: Path) -> Project:
    import yaml

    check = _Checker(path)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML", context=str(e).replace("\n", " ")) from e
    if node is None:
        raise ConfigError(f"{path} is empty", hint="give at least image: and a job")
    fields = check.mapping(
        node,
        "",
        {
            "image": check.string,
            "env": check.env,
            "volumes": check.volumes,
            "caches": check.caches,
            "workdir": check.absolute,
            "project_mount": check.project_mount,
            "network": check.string,
            "ports": check.strings,
            "resources": check.resources,
            "setup": check.strings,
            "jobs": check.jobs,
        },
    )
    values = {k: v for k, (_, v) in fields.items()}
    return Project(path=path, **values)


def _kind(node: Any) -> str:
    import yaml

    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    value = yaml.SafeLoader("").construct_object(node) if node is not None else None
    return "nothing" if value is None else repr(value)


def _short(command: str) -> str:
    first = command.strip().splitlines()[0] if command.strip() else command
    return first if len(first) <= 60 else first[:57] + "..."
