"""save, rmi, load round-trips to the same image id (docker-archive and OCI archive), and
load reads an OCI layout directory, as an unprivileged user."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import SandboxEnv
from tests.support import oci

pytestmark = pytest.mark.needs("userns")

NO_NET = ("--network", "none")


def _ok(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture
def loaded(fresh_sandbox_env: SandboxEnv, busybox_tarball: Path, tmp_path: Path) -> str:
    """busybox (gzip) + a zstd layer, loaded from an OCI layout dir as example.com/bb:1."""
    layout = oci.Layout(tmp_path / "layout")
    base = layout.layer_from_file(busybox_tarball, "gzip")
    extra = layout.layer(oci.tar_bytes([("hello", b"from a zstd layer\n")]), "zstd")
    layout.tag(layout.image([base, extra]), "example.com/bb:1")
    done = _ok(fresh_sandbox_env.run("load", "-q", "-i", layout.root))
    return done.stdout.strip()


@pytest.mark.parametrize("format_", ["docker-archive", "oci-archive"])
def test_save_rmi_load_round_trips(
    fresh_sandbox_env: SandboxEnv, loaded: str, tmp_path: Path, format_: str
) -> None:
    env = fresh_sandbox_env
    name = "example.com/bb:1"
    assert _ok(env.run("run", "--rm", *NO_NET, name, "cat", "/hello")).stdout == (
        "from a zstd layer\n"
    )
    archive = tmp_path / "bb.tar"
    _ok(env.run("save", "--format", format_, "-o", archive, name))
    _ok(env.run("rmi", name))
    assert _ok(env.run("images", "-q")).stdout == ""
    done = _ok(env.run("load", "-q", "-i", archive))
    assert done.stdout.strip() == loaded
    listed = _ok(env.run("images", "--format", "json")).stdout
    assert name in listed
    assert _ok(env.run("run", "--rm", *NO_NET, name, "cat", "/hello")).stdout == (
        "from a zstd layer\n"
    )


def test_load_rejects_garbage(fresh_sandbox_env: SandboxEnv, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not an archive" * 100)
    done = fresh_sandbox_env.run("load", "-i", junk)
    assert done.returncode == 125
    assert "cannot load" in done.stderr and "Traceback" not in done.stderr
