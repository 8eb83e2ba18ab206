"""Decompression bombs and huge sparse files: an import stays bounded on disk, never fills it.

Runs of zeros become holes when a layer is unpacked, so an archive that expands to a gigabyte
of zeros (a few megabytes compressed) or a sparse member with a terabyte of apparent size
costs almost no disk. Both go through the real `sandbox image import` as the test user.
"""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.helpers import SandboxEnv

pytestmark = pytest.mark.needs("userns", "subids", "newuidmap")

GIB = 1 << 30


class _Zeros(io.RawIOBase):
    """size zero bytes, produced lazily (the bomb is never in memory)."""

    def __init__(self, size: int):
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def _layer_file(env: SandboxEnv, name: str) -> Path:
    layers = env.data_home / "sandbox" / "storage" / "layers"
    (layer,) = [p for p in layers.iterdir() if not p.name.startswith(".")]
    return layer / "diff" / name


def test_gzip_bomb_of_zeros_unpacks_sparse(
    fresh_sandbox_env: SandboxEnv, tmp_path: Path, busybox_tarball: Path
) -> None:
    bomb = tmp_path / "bomb.tar.gz"
    with gzip.open(bomb, "wb", compresslevel=1) as gz, tarfile.open(fileobj=gz, mode="w|") as tar:
        with tarfile.open(busybox_tarball) as base:
            for member in base.getmembers():
                tar.addfile(member, base.extractfile(member) if member.isreg() else None)
        info = tarfile.TarInfo("zeros")
        info.size = GIB
        tar.addfile(info, io.BufferedReader(_Zeros(GIB)))
    assert bomb.stat().st_size < 16 << 20
    done = fresh_sandbox_env.run("image", "import", bomb, "bomb", timeout=600)
    assert done.returncode == 0, done.stderr
    zeros = _layer_file(fresh_sandbox_env, "zeros")
    st = zeros.stat()
    assert st.st_size == GIB
    assert st.st_blocks * 512 < 1 << 20  # a hole, not a gigabyte on disk
    out = fresh_sandbox_env.run("run", "--rm", "--network", "none", "bomb", "wc", "-c", "/zeros")
    assert out.stdout.split()[0] == str(GIB)


def test_huge_sparse_member_stays_sparse(
    fresh_sandbox_env: SandboxEnv, tmp_path: Path, busybox_tarball: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["tar", "-xf", busybox_tarball, "-C", root, "--no-same-owner"], check=True)
    sparse = root / "sparse"
    with open(sparse, "wb") as f:
        f.truncate(1 << 40)  # a terabyte of apparent size
        f.seek((1 << 40) - 5)
        f.write(b"tail\n")
    archive = tmp_path / "sparse.tar"
    subprocess.run(
        ["tar", "--sparse", "--numeric-owner", "-cf", archive, "-C", root, "."], check=True
    )
    assert archive.stat().st_size < 64 << 20
    done = fresh_sandbox_env.run("image", "import", archive, "sparse", timeout=600)
    assert done.returncode == 0, done.stderr
    st = _layer_file(fresh_sandbox_env, "sparse").stat()
    assert st.st_size == 1 << 40
    assert st.st_blocks * 512 < 1 << 20
    os.sync()
