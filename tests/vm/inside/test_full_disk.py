"""A full disk, for real: run inside the VM (tests/vm/inside.sh), where root gave the test user
a small ext4 file system on a loop device (SANDBOX_TEST_SMALL_DISK). sandbox keeps everything
there (XDG_DATA_HOME, XDG_RUNTIME_DIR, HOME); a ballast file takes the free space down to what
a test wants, and deleting it is "freeing space".

What must hold: an import, load, pull or commit that does not fit fails with exit 125 and one
error line naming the full device (no traceback) and leaves the store as it was (the same
images, no half layer, temporary directory, partial download or lock file), the earlier images
still run, and the same command succeeds once there is space. A run or create on a full disk
fails cleanly and leaves no container behind; a container that fills the disk itself gets its
own ENOSPC, and afterwards ps, inspect, logs and rm all work; a record that cannot be rewritten
keeps its old content. The host reports these results through tests/vm/test_cgroups_vm.py.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import helpers
from tests.helpers import SandboxEnv, ok
from tests.support import oci

pytestmark = pytest.mark.needs("userns", "subids", "newuidmap", "busybox")

MiB = 1 << 20
BIG = 24 * MiB  # an incompressible file, more than a test leaves free
NO_NET = ("--network", "none")


def _disk() -> Path:
    raw = os.environ.get("SANDBOX_TEST_SMALL_DISK", "")
    if not raw or not os.path.ismount(raw) or not os.access(raw, os.W_OK):
        pytest.fail(f"SANDBOX_TEST_SMALL_DISK={raw!r} is not a writable mount (inside.sh makes it)")
    return Path(raw)


def _free(disk: Path) -> int:
    vfs = os.statvfs(disk)
    return vfs.f_bavail * vfs.f_frsize


def _fill(disk: Path, leave: int) -> None:
    """Take the free space down to about `leave` bytes (0: none at all) with ballast files."""
    _unfill(disk)
    want = _free(disk) - leave
    if want > MiB:
        fd = os.open(disk / "ballast", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            # Extent metadata needs a few blocks too: allocate a little less, if refused.
            for margin in (0, MiB, 4 * MiB):
                try:
                    os.posix_fallocate(fd, 0, want - margin)
                    break
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
        finally:
            os.close(fd)
    if leave == 0:  # the last blocks, one page at a time
        fd = os.open(disk / "ballast-tail", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            page = b"\0" * 4096
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, page)
            with contextlib.suppress(OSError):
                os.fsync(fd)
        finally:
            os.close(fd)


def _unfill(disk: Path) -> None:
    for name in ("ballast", "ballast-tail"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(disk / name)


@pytest.fixture(scope="module")
def small(busybox_tarball: Path) -> Iterator[SandboxEnv]:
    """A sandbox home on the small disk, with the busybox image in it."""
    disk = _disk()
    env = SandboxEnv.create(disk / "env")
    ok(env.run("image", "import", busybox_tarball, "busybox"))
    yield env
    _unfill(disk)


@pytest.fixture
def disk(small: SandboxEnv) -> Iterator[Path]:
    """The small disk; afterwards its space is back and no container is left (so one failing
    test does not fail the next)."""
    disk = _disk()
    yield disk
    _unfill(disk)
    for line in small.run("ps", "-aq").stdout.split():
        small.run("rm", "-f", line)


@pytest.fixture(scope="module")
def big_tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # On the VM's own disk, not the small one.
    return oci.random_tar(tmp_path_factory.mktemp("big") / "big.tar", BIG)


@pytest.fixture(scope="module")
def big_layout(tmp_path_factory: pytest.TempPathFactory, busybox_tarball: Path) -> Path:
    """An OCI layout: busybox (the small store has that layer already) + BIG random bytes."""
    root = tmp_path_factory.mktemp("layout")
    out = oci.Layout(root / "layout")
    tar = oci.random_tar(root / "big.tar", BIG)
    base = out.layer_from_file(busybox_tarball, "tar")
    out.tag(out.image([base, out.layer_from_file(tar, "tar")]), "localhost/fd/big:1")
    tar.unlink()
    return out.root


def _store_state(env: SandboxEnv) -> dict[str, object]:
    """What a failed command must not change: the image list and every entry of the store
    that is not inside a layer (blobs, layers and their temporary names, downloads)."""
    root = env.data_home / "sandbox" / "storage"
    entries: dict[str, list[str]] = {}
    for part in ("", "blobs/sha256", "layers", "downloads"):
        with contextlib.suppress(FileNotFoundError):
            entries[part] = sorted(os.listdir(root / part))
    images = json.loads(ok(env.run("images", "--format", "json")))
    return {"entries": entries, "images": sorted(i["Id"] for i in images)}


def _full_disk_error(done: subprocess.CompletedProcess[str], disk: Path) -> str:
    """The one error line of a command that failed for want of space; it names the device."""
    assert done.returncode == 125, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, done.stderr
    assert "no space left on /dev/loop" in errors[0], done.stderr
    assert f" on {disk}" in errors[0], done.stderr  # the mount point
    return errors[0]


def _still_runs(env: SandboxEnv) -> None:
    done = env.run("run", "--rm", *NO_NET, "busybox", "echo", "still here")
    assert done.returncode == 0 and done.stdout == "still here\n", (done.stdout, done.stderr)


def test_import_bigger_than_the_free_space(small: SandboxEnv, disk: Path, big_tarball: Path):
    before = _store_state(small)
    _fill(disk, 8 * MiB)
    _full_disk_error(small.run("image", "import", big_tarball, "big"), disk)
    assert _store_state(small) == before
    _unfill(disk)  # the store is unchanged, so running needs no space we took away
    _still_runs(small)

    ok(small.run("image", "import", big_tarball, "big"))
    (image,) = [
        i
        for i in json.loads(ok(small.run("images", "--format", "json")))
        if i["Names"] and "localhost/big:latest" in i["Names"]
    ]
    assert image["Size"] >= BIG, image
    ok(small.run("rmi", "big"))
    assert _store_state(small) == before


def test_load_on_a_full_disk(small: SandboxEnv, disk: Path, big_layout: Path):
    before = _store_state(small)
    _fill(disk, 8 * MiB)
    _full_disk_error(small.run("load", "-i", big_layout), disk)
    assert _store_state(small) == before
    _unfill(disk)
    _still_runs(small)

    ok(small.run("load", "-i", big_layout))
    done = small.run("run", "--rm", *NO_NET, "localhost/fd/big:1", "stat", "-c", "%s", "/big.bin")
    assert done.stdout == f"{BIG}\n", (done.stdout, done.stderr)
    ok(small.run("rmi", "localhost/fd/big:1"))
    assert _store_state(small) == before


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's docker-registry on 127.0.0.1 (the host brings the binary: the guest has no
    package of it); its host:port."""
    binary = Path(os.environ.get("SANDBOX_TEST_REGISTRY_BINARY", "/usr/bin/docker-registry"))
    if not os.access(binary, os.X_OK):
        helpers.missing("registry", f"{binary} is missing (the host copies /usr/bin's in)")
    root = tmp_path_factory.mktemp("registry")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        host = f"127.0.0.1:{s.getsockname()[1]}"
    (root / "config.yml").write_text(
        "version: 0.1\nlog: {level: error}\n"
        f"storage:\n  filesystem: {{rootdirectory: {root / 'storage'}}}\n"
        f"http: {{addr: '{host}'}}\n"
    )
    log = (root / "registry.log").open("wb")
    process = subprocess.Popen([binary, "serve", root / "config.yml"], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://{host}/v2/", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                assert process.poll() is None, (root / "registry.log").read_text()
                assert time.monotonic() < deadline, "docker-registry did not answer"
                time.sleep(0.2)
        yield host
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_pull_on_a_full_disk(
    small: SandboxEnv,
    disk: Path,
    big_layout: Path,
    registry: str,
    tmp_path: Path,
):
    # A roomy store on the VM's own disk loads the image and pushes it to the registry.
    roomy = SandboxEnv.create(tmp_path / "roomy")
    ok(roomy.run("load", "-i", big_layout))
    ref = f"{registry}/fd/big:1"
    ok(roomy.run("push", "localhost/fd/big:1", ref, "--tls-verify=false"))

    before = _store_state(small)
    _fill(disk, 8 * MiB)
    _full_disk_error(small.run("pull", "-q", ref, "--tls-verify=false"), disk)
    assert _store_state(small) == before
    _unfill(disk)
    _still_runs(small)

    ok(small.run("pull", "-q", ref, "--tls-verify=false"))
    done = small.run("run", "--rm", *NO_NET, ref, "stat", "-c", "%s", "/big.bin")
    assert done.stdout == f"{BIG}\n", (done.stdout, done.stderr)
    ok(small.run("rmi", ref))
    assert _store_state(small) == before


def test_commit_on_a_full_disk(small: SandboxEnv, disk: Path):
    """commit writes the container's changes as a tar next to the store, then unpacks it as
    a layer: either step failing for want of space leaves the store and the container."""
    script = f"head -c {BIG // 2} /dev/urandom > /data"
    ok(small.run("run", "--name", "changed", *NO_NET, "busybox", "sh", "-c", script))
    before = _store_state(small)
    data_root = small.data_home / "sandbox"
    _fill(disk, 8 * MiB)
    _full_disk_error(small.run("commit", "changed", "snapshot"), disk)
    assert _store_state(small) == before
    assert not [n for n in os.listdir(data_root) if n.startswith(".commit-")]
    _unfill(disk)
    ok(small.run("commit", "changed", "snapshot"))
    done = small.run("run", "--rm", *NO_NET, "snapshot", "stat", "-c", "%s", "/data")
    assert done.stdout == f"{BIG // 2}\n", (done.stdout, done.stderr)
    ok(small.run("rmi", "snapshot"))
    ok(small.run("rm", "changed"))
    assert _store_state(small) == before


def _containers(env: SandboxEnv) -> list[dict[str, object]]:
    return list(json.loads(ok(env.run("ps", "-a", "--format", "json"))))


def _container_entries(env: SandboxEnv) -> list[str]:
    return sorted(os.listdir(env.data_home / "sandbox" / "containers"))


def test_run_and_create_on_a_full_disk(small: SandboxEnv, disk: Path):
    _still_runs(small)  # the containers directory and its lock exist
    entries = _container_entries(small)
    _fill(disk, 0)
    for command in (
        ("run", "--rm", *NO_NET, "busybox", "true"),
        ("run", "--name", "full-run", *NO_NET, "busybox", "true"),
        ("create", "--name", "full-create", *NO_NET, "busybox", "true"),
        ("run", "-d", "--name", "full-detached", *NO_NET, "busybox", "sleep", "60"),
    ):
        _full_disk_error(small.run(*command), disk)
        assert _containers(small) == [], command
        assert _container_entries(small) == entries, command  # nothing half-made
    _unfill(disk)
    _still_runs(small)
    assert _container_entries(small) == entries


@pytest.mark.parametrize("mode", ["foreground", "detached", "rm"])
def test_container_that_fills_the_disk(small: SandboxEnv, disk: Path, mode: str):
    """The container's own writes fill the disk: it sees ENOSPC; sandbox keeps its record
    readable (or, where even the exit record cannot be written, says so: the record then
    reads as exited) and ps, inspect, logs and rm work; rm gives the space back."""
    entries = _container_entries(small)
    _fill(disk, 8 * MiB)
    left = _free(disk)
    script = f"echo begun; dd if=/dev/zero of=/fill bs=1M count={BIG // MiB}; echo wrote=$?"
    if mode == "rm":  # removed when it ends, which needs no space
        done = small.run("run", "--rm", *NO_NET, "busybox", "sh", "-c", script)
        assert done.returncode == 0 and "wrote=1" in done.stdout, (done.stdout, done.stderr)
        assert "Traceback" not in done.stderr and "Error" not in done.stderr, done.stderr
        assert _containers(small) == []
        assert _container_entries(small) == entries
        assert _free(disk) > left - MiB
        return
    if mode == "detached":
        ok(small.run("run", "-d", "--name", "filler", *NO_NET, "busybox", "sh", "-c", script))
        helpers.until(
            lambda: all(c["State"] != "running" for c in _containers(small)),
            "the detached filler to exit",
            timeout=300,
        )
    else:
        done = small.run("run", "--name", "filler", *NO_NET, "busybox", "sh", "-c", script)
        assert done.returncode == 0, (done.stdout, done.stderr)
        assert done.stdout == "begun\nwrote=1\n", (done.stdout, done.stderr)
        assert "No space left on device" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr, done.stderr
    assert _free(disk) < MiB  # the container filled it

    (listed,) = _containers(small)
    assert listed["Names"] == ["filler"] and listed["State"] == "exited", listed
    assert listed["ExitCode"] in (0, None), listed  # None: the exit could not be recorded
    inspected = json.loads(ok(small.run("inspect", "filler")))
    assert inspected[0]["State"]["Status"] == "exited", inspected
    logs = small.run("logs", "filler")
    assert logs.returncode == 0, logs.stderr
    if mode == "detached":  # the monitor's log; the lines after the disk filled may be lost
        assert logs.stdout.startswith("begun\n"), logs.stdout
    done = small.run("rm", "filler")
    assert done.returncode == 0, done.stderr
    assert _containers(small) == []
    assert _container_entries(small) == entries
    assert _free(disk) > left - MiB  # the container's files went with it
    _unfill(disk)
    _still_runs(small)


def test_record_write_on_a_full_disk(small: SandboxEnv, disk: Path):
    """A record that cannot be rewritten on a full disk keeps its old content, and no
    temporary file is left beside it (state._write_atomic); rm works with no space at all."""
    ok(small.run("create", "--name", "kept", *NO_NET, "busybox", "true"))
    (entry,) = _containers(small)
    directory = small.data_home / "sandbox" / "containers" / str(entry["Id"])
    record = (directory / "container.json").read_bytes()
    _fill(disk, 0)
    _full_disk_error(small.run("rename", "kept", "renamed"), disk)
    assert (directory / "container.json").read_bytes() == record
    leftovers = [n for n in os.listdir(directory) if n.endswith(".tmp")]
    assert leftovers == [], leftovers  # .container.json.PID.tmp
    assert [c["Names"] for c in _containers(small)] == [["kept"]]
    ok(small.run("rm", "kept"))
    assert _containers(small) == []
    _unfill(disk)
