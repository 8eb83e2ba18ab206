"""sandbox.yaml parsing: the schema, and errors that name the file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox import project
from sandbox.errors import ConfigError

SMALLEST = """\
image: busybox
jobs:
  test:
    steps:
      - echo one
      - run: sh -c 'exit 3'
        name: fails
"""


def test_the_smallest_job_file(tmp_path: Path) -> None:
    p = project.parse(SMALLEST, tmp_path / "sandbox.yaml")
    job = p.job("test")
    assert [s.run for s in job.steps] == ["echo one", "sh -c 'exit 3'"]
    assert [s.name for s in job.steps] == ["echo one", "fails"]
    assert job.steps[1].line == 6
    assert p.image_for(job) == "busybox"
    assert p.mounts() == (f"{tmp_path}:/work",)


def test_every_key(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    text = """\
image: debian
workdir: /work/src
project_mount: /src
env: {A: 1, B: "two", C: true}
volumes: [./data:/data:ro, named:/named]
caches: {pip: /root/.cache/pip}
network: none
ports: ["8080:80"]
resources: {memory: 512m, cpus: 1.5, pids_limit: 100}
setup: [apt-get update]
jobs:
  build:
    image: busybox
    env: [X=y]
    workdir: /tmp
    caches: {ccache: /ccache}
    resources: {memory: 1g}
    steps:
      - true
      - run: make
        env: {J: "4"}
        workdir: /src
"""
    p = project.parse(text, tmp_path / "sandbox.yaml")
    assert p.env == ("A=1", "B=two", "C=true")
    assert p.volumes == (f"{tmp_path}/data:/data:ro", "named:/named")
    assert p.mounts()[0] == f"{tmp_path}:/src"
    assert p.caches == (("pip", "/root/.cache/pip"),)
    assert p.resources == project.Resources(memory="512m", cpus="1.5", pids_limit=100)
    job = p.job("build")
    assert job.steps[0].run == "true"
    assert job.steps[1].env == ("J=4",) and job.steps[1].workdir == "/src"
    assert p.image_for(job) == "busybox"
    assert job.resources == project.Resources(memory="1g")


def test_project_mount_false_mounts_nothing(tmp_path: Path) -> None:
    p = project.parse("image: x\nproject_mount: false\n", tmp_path / "sandbox.yaml")
    assert p.mounts() == ()


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("image: x\nimgae: y\n", ":2: imgae: unknown key"),
        ("image: [x]\n", ":1: image: must be a string"),
        ("env: {1A: x}\n", ":1: env.1A: is not a valid variable name"),
        ("env: [NOEQUALS]\n", ":1: env[0]: 'NOEQUALS' is not KEY=VALUE"),
        ("workdir: relative\n", ":1: workdir: 'relative' must be an absolute"),
        ("resources:\n  memory: 1g\n  pids_limit: -3\n", ":3: resources.pids_limit"),
        ("resources: {memroy: 1g}\n", ":1: resources.memroy: unknown key"),
        ("caches: {'bad/name': /x}\n", ":1: caches.bad/name: invalid volume name"),
        ("volumes: [nocolon]\n", ":1: volumes[0]: 'nocolon' is not SOURCE:/PATH"),
        ("jobs:\n  t:\n    steps:\n      - name: x\n", ":4: jobs.t.steps[0]: a step needs run"),
        ("jobs:\n  t:\n    steps: {a: b}\n", ":3: jobs.t.steps: must be a non-empty list"),
        ("jobs:\n  t: {}\n", ":2: jobs.t: a job needs steps"),
        ("jobs:\n  -bad:\n    steps: [x]\n", ":2: jobs.-bad: job names"),
        ("- a list\n", ":1: must be a mapping"),
    ],
)
def test_errors_name_file_line_and_key(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "sandbox.yaml"
    with pytest.raises(ConfigError) as info:
        project.parse(text, path)
    assert str(info.value).startswith(f"{path}{where}"), str(info.value)


def test_invalid_yaml_and_missing_image(tmp_path: Path) -> None:
    path = tmp_path / "sandbox.yaml"
    with pytest.raises(ConfigError, match="not valid YAML"):
        project.parse("a: [", path)
    p = project.parse("jobs:\n  t:\n    steps: [x]\n", path)
    with pytest.raises(ConfigError, match="no image"):
        p.image_for(p.job("t"))
    with pytest.raises(ConfigError) as info:
        p.job("nope")
    assert info.value.hint is not None and "t" in info.value.hint


def test_found_in_a_parent_directory(tmp_path: Path) -> None:
    (tmp_path / "sandbox.yaml").write_text("image: x\n")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert project.find(deep) == tmp_path / "sandbox.yaml"
    assert project.load(tmp_path / "sandbox.yaml").image == "x"
