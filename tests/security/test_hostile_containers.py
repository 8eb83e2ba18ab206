"""Escapes published against other runtimes, replayed against `sandbox run`; each asserts
that nothing changed on the host."""

from __future__ import annotations

import os
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.security.conftest import fingerprint

Run = Callable[..., subprocess.CompletedProcess[str]]

pytestmark = pytest.mark.needs("unprivileged", "userns", "subids", "newuidmap", "busybox")


@pytest.fixture
def hostile_root(tmp_path: Path, busybox_tarball: Path) -> tuple[Path, Path]:
    """A busybox rootfs directory (for --rootfs) and a host directory it tries to reach."""
    root = tmp_path / "root"
    root.mkdir()
    with tarfile.open(busybox_tarball) as tar:
        tar.extractall(root)  # our own busybox tarball: trusted
    host = tmp_path / "host"
    host.mkdir()
    (host / "victim").write_text("secret\n")
    tmp_path.chmod(0o755)
    return root, host


def test_docker_cve_2014_9356_etc_hosts_symlink_out(
    sandbox: Run, hostile_root: tuple[Path, Path]
) -> None:
    root, host = hostile_root
    for name in ("hosts", "hostname", "resolv.conf"):
        path = root / "etc" / name
        if path.exists() or path.is_symlink():
            path.unlink()
        path.symlink_to(host / "victim")
    before = fingerprint(host / "victim")
    out = sandbox(
        "run", "--rm", "--rootfs", root, "sh", "-c", "cat /etc/hostname; echo x >> /etc/hosts"
    )
    assert fingerprint(host / "victim") == before, out.stderr
    assert "secret" not in out.stdout


def test_runc_cve_2021_30465_volume_target_through_symlink(
    sandbox: Run, hostile_root: tuple[Path, Path], tmp_path: Path
) -> None:
    root, host = hostile_root
    (root / "data").symlink_to(host)  # absolute: would land on the host without in-root lookup
    (root / "nested").symlink_to("../../../../../../" + str(host).lstrip("/"))
    volume = tmp_path / "volume"
    volume.mkdir()
    volume.chmod(0o777)
    before = sorted(os.listdir(host))
    done = sandbox(
        "run",
        "--rm",
        "--rootfs",
        "-v",
        f"{volume}:/data",
        "-v",
        f"{volume}:/nested/x",
        root,
        "sh",
        "-c",
        "echo in > /data/file; ls /nested/x",
    )
    assert sorted(os.listdir(host)) == before, done.stderr
    assert fingerprint(host / "victim") == fingerprint(host / "victim")
    if done.returncode == 0:
        assert (volume / "file").read_text() == "in\n"


def test_docker_cve_2018_15664_symlinked_proc_stays_inside(
    sandbox: Run, hostile_root: tuple[Path, Path]
) -> None:
    """Also runc CVE-2019-16884: the image points /proc elsewhere to dodge masking."""
    root, host = hostile_root
    proc = root / "proc"
    if proc.exists():
        proc.rmdir()
    proc.symlink_to(host)
    before = sorted(os.listdir(host))
    done = sandbox(
        "run",
        "--rm",
        "--rootfs",
        root,
        "sh",
        "-c",
        "grep -c ' /proc/keys ' /proc/self/mountinfo; wc -c < /proc/keys",
    )
    assert sorted(os.listdir(host)) == before
    # A /proc that dangles inside the root is refused (one line, exit 125) or, if it resolves
    # inside, mounted and masked there; it never follows the link out.
    if done.returncode == 0:
        assert done.stdout.split() == ["1", "0"]
    else:
        assert done.returncode == 125 and "Traceback" not in done.stderr, done.stderr


def test_runc_cve_2024_21626_leaked_fd_as_workdir(sandbox: Run, busybox_image: str) -> None:
    for fd in range(3, 9):
        done = sandbox(
            "run", "--rm", "-w", f"/proc/self/fd/{fd}", busybox_image, "sh", "-c", "pwd -P; ls .."
        )
        # No descriptor of the engine is open when the working directory is entered: the
        # path names nothing (or a socket), so the run is refused with one line.
        assert done.returncode == 125, (fd, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr


def test_runc_cve_2022_0492_no_new_user_or_cgroup_mount(sandbox: Run, busybox_image: str) -> None:
    done = sandbox(
        "run",
        "--rm",
        busybox_image,
        "sh",
        "-c",
        "unshare -U -r true && echo unshared; mkdir -p /tmp/c;"
        "mount -t cgroup -o rdma cgroup /tmp/c 2>/dev/null && echo mounted; true",
    )
    assert done.returncode == 0, done.stderr
    assert "unshared" not in done.stdout and "mounted" not in done.stdout


def test_runc_cve_2023_25809_cgroup_tree_read_only(sandbox: Run, busybox_image: str) -> None:
    done = sandbox(
        "run",
        "--rm",
        busybox_image,
        "sh",
        "-c",
        "mkdir /sys/fs/cgroup/x 2>/dev/null && echo made;"
        "touch /sys/fs/cgroup/release_agent 2>/dev/null && echo touched; true",
    )
    assert "made" not in done.stdout and "touched" not in done.stdout


def test_runc_cve_2022_29162_no_inheritable_capabilities(sandbox: Run, busybox_image: str) -> None:
    done = sandbox(
        "run",
        "--rm",
        "-u",
        "1000",
        busybox_image,
        "grep",
        "-E",
        "CapInh|CapAmb|CapEff",
        "/proc/self/status",
    )
    assert done.returncode == 0, done.stderr
    assert all(line.split()[1] == "0" * 16 for line in done.stdout.splitlines())
