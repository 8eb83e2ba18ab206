"""spec.build: options combined with the image config, and every refusal before any fork."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox import spec
from sandbox.errors import UsageError
from sandbox.rootless.idmap import IdMapping, IdRange

MAPPING = IdMapping((IdRange(0, 1000, 1),), (IdRange(0, 1000, 1),), single_reason="test")
ROOT = spec.Root("dir", Path("/tmp/root"))


def build(options: spec.RunOptions, config: dict[str, object] | None = None) -> spec.ContainerSpec:
    return spec.build(
        options,
        container_id="ab" * 32,
        name="n",
        image_config=config or {},
        image_id=None,
        root=ROOT,
        mapping=MAPPING,
        etc_dir=Path("/tmp/etc"),
    )


def test_command_follows_podmans_entrypoint_and_cmd_rules() -> None:
    config = {"Entrypoint": ["/entry"], "Cmd": ["default"]}
    assert build(spec.RunOptions("img"), config).process.args == ("/entry", "default")
    assert build(spec.RunOptions("img", ("mine",)), config).process.args == ("/entry", "mine")
    assert build(spec.RunOptions("img", ("a",), entrypoint="sh"), config).process.args == (
        "sh",
        "a",
    )
    assert build(spec.RunOptions("img", entrypoint='["a", "b"]'), config).process.args == ("a", "b")
    with pytest.raises(UsageError, match="no command"):
        build(spec.RunOptions("img"), {})


def test_environment_layers_later_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("# c\n\nA=file\nB=file\n")
    monkeypatch.setenv("FROM_HOST", "h")
    process = build(
        spec.RunOptions(
            "img",
            ("x",),
            env=("B=cli", "FROM_HOST", "UNSET_X"),
            env_files=(str(env_file),),
            tty=True,
        ),
        {"Env": ["PATH=/img", "A=img"]},
    ).process
    env = dict(e.split("=", 1) for e in process.env)
    assert env["PATH"] == "/img"
    assert (env["A"], env["B"], env["FROM_HOST"]) == ("file", "cli", "h")
    assert "UNSET_X" not in env
    assert env["TERM"] == "xterm" and env["HOSTNAME"] == "abababababab"


@pytest.mark.parametrize("volume", ["nocolon", "/a:relative", ":/x", "/a:/b:bogus", "name:/x"])
def test_bad_volumes_are_refused(volume: str) -> None:
    with pytest.raises(UsageError):
        spec.parse_volume(volume)


def test_volume_source_must_exist(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        spec.parse_volume(f"{tmp_path}/missing:/x")
    mount = spec.parse_volume(f"{tmp_path}:/data/:ro")
    assert (mount.destination, mount.source, mount.options) == (
        "/data",
        str(tmp_path),
        ("rbind", "ro"),
    )


def test_two_mounts_on_one_path_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="two mounts"):
        build(spec.RunOptions("img", ("x",), volumes=(f"{tmp_path}:/d",), tmpfs=("/d",)))


def test_read_only_adds_scratch_tmpfs_and_marks_the_root() -> None:
    built = build(spec.RunOptions("img", ("x",), read_only=True))
    assert built.root.readonly
    assert {m.destination for m in built.mounts if m.type == "tmpfs"} >= {"/tmp", "/run"}


@pytest.mark.parametrize(
    "options",
    [
        spec.RunOptions("img", ("x",), workdir="relative"),
        spec.RunOptions("img", ("x",), hostname="bad_host!"),
        spec.RunOptions("img", ("x",), env=("=x",)),
        spec.RunOptions("img", ("x",), tmpfs=("relative",)),
    ],
)
def test_invalid_options_fail_in_validation(options: spec.RunOptions) -> None:
    with pytest.raises(UsageError):
        build(options)


@pytest.mark.parametrize("name", ["ok", "a.b-c_d", "0x"])
def test_valid_names(name: str) -> None:
    assert spec.validate_name(name) == name


@pytest.mark.parametrize("name", ["", "-x", "a b", "a/b", "x" * 200])
def test_invalid_names(name: str) -> None:
    with pytest.raises(UsageError):
        spec.validate_name(name)
