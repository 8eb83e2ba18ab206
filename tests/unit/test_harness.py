"""The test harness itself: the busybox rootfs builder and the skip-or-fail gate."""

from __future__ import annotations

import stat
import tarfile
from pathlib import Path

import pytest

from tests import helpers


def test_busybox_tarball_layout(busybox_tarball: Path) -> None:
    with tarfile.open(busybox_tarball) as tar:
        members = {m.name: m for m in tar.getmembers()}
    busybox = members["bin/busybox"]
    assert busybox.isfile() and busybox.mode == 0o755 and (busybox.uid, busybox.gid) == (0, 0)
    assert members["bin/sh"].issym() and members["bin/sh"].linkname == "busybox"
    shadow = members["etc/shadow"]
    assert (shadow.uid, shadow.gid, shadow.mode) == (0, 42, 0o640)
    assert members["tmp"].isdir()
    assert stat.S_IMODE(members["tmp"].mode) == 0o1777
    assert {"etc/passwd", "etc/group"} <= members.keys()


def test_required_feature_fails_instead_of_skipping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_REQUIRE_FEATURES", "busybox, debian_rootfs")
    with pytest.raises(pytest.fail.Exception, match="required feature 'debian_rootfs'"):
        helpers.missing("debian_rootfs", "not built")
    monkeypatch.setenv("SANDBOX_REQUIRE_FEATURES", "busybox")
    with pytest.raises(pytest.skip.Exception, match="needs debian_rootfs: not built"):
        helpers.missing("debian_rootfs", "not built")


def test_all_requires_every_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_REQUIRE_FEATURES", "all")
    assert {"userns", "overlay_userns", "debian_rootfs"} <= helpers.required_features()


def test_unknown_feature_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown feature"):
        helpers.needs("userns-typo")
