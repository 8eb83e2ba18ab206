"""Hostile layer tarballs, one per published escape; each checks nothing outside changed.

Box.unpack (tests/unit/test_unpack.py) snapshots everything around the layer directory and the
host's /etc/passwd before and after, and fails if anything differs.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.test_unpack import Sandbox, directory, entry, hardlink, symlink, tar_bytes


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Sandbox]:
    yield Sandbox(tmp_path)


def test_docker_cve_2014_6407_symlink_and_hardlink_traversal(box: Sandbox) -> None:
    box.unpack(
        tar_bytes(
            [
                symlink("out", "../outside"),
                entry("out/victim", data=b"pwned"),
                hardlink("link", "../outside/victim"),
                entry("../outside/new", data=b"pwned"),
            ]
        )
    )
    assert (box.outside / "victim").read_text() == "secret\n"
    assert not (box.outside / "new").exists()


def test_umoci_cve_2021_29136_dot_entry_as_symlink(box: Sandbox) -> None:
    box.unpack(tar_bytes([symlink(".", str(box.outside)), entry("victim", data=b"pwned")]))
    assert (box.outside / "victim").read_text() == "secret\n"


def test_containerd_cve_2021_32760_chmod_through_symlink(box: Sandbox) -> None:
    box.unpack(tar_bytes([symlink("d", str(box.outside / "dir")), directory("d", mode=0o777)]))
    assert (box.outside / "dir").stat().st_mode & 0o777 == 0o755


def test_python_tarfile_filter_bypass_2025_long_symlink_chain(box: Sandbox) -> None:
    """CVE-2025-4517/4330: realpath() gives up past PATH_MAX, so a chain of long symlinked
    directories hides that the last link climbs out. We resolve in the kernel instead."""
    long = "d" * 247
    members = []
    path = ""
    for step in "abcdefghijklmnop":
        members.append(directory(f"{path}{long}"))
        members.append(symlink(f"{path}{step}", long))
        path += f"{long}/"
    members.append(symlink("escape", "/".join("abcdefghijklmnop") + "/" + "../" * 17 + "outside"))
    members.append(hardlink("victim-link", "escape/victim"))
    members.append(entry("escape/victim", data=b"pwned"))
    box.unpack(tar_bytes(members, fmt=tarfile.PAX_FORMAT))
    assert (box.outside / "victim").read_text() == "secret\n"


def test_python_tarfile_filter_bypass_2024_hardlink_to_symlink_then_write(box: Sandbox) -> None:
    """CVE-2024-12718-style: a hard link to a symlink that points out, then a write through it."""
    box.unpack(
        tar_bytes(
            [
                symlink("s", "../outside/victim"),
                hardlink("h", "s"),
                entry("h", data=b"pwned"),
            ]
        )
    )
    assert (box.outside / "victim").read_text() == "secret\n"
