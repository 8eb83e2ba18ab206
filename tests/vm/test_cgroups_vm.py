"""The cgroup tests, run inside a real systemd VM and reported here, one test per in-VM test.

scripts/vm-image.sh (run as root by scripts/test.sh) builds a Debian bookworm image with
systemd, a lingering test user whose user manager has cpu, cpuset, io, memory and pids
delegated, and a oneshot unit that runs tests/vm/inside.sh. Here we boot it once per session
with qemu (TCG: KVM hangs on these machines). Debian's cloud kernel has no 9p, so this tree goes
in as a second disk (ext4 labelled sbhost, made with mke2fs -d: no root needed) and the JUnit
report comes back as a tar the guest writes onto a third, raw disk. SANDBOX_TEST_VM_IMAGE names
the image directory; without it the tests skip, or fail where CI requires the "vm" feature.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests import helpers

BOOT_TIMEOUT = 1500.0  # seconds: TCG on a busy 2-core machine is slow
INSIDE = (
    "test_cgroup_namespace_root",
    "test_sys_fs_cgroup_shows_only_the_container",
    "test_memory_limit_oom_kills_with_137",
    "test_pids_limit_stops_a_fork_loop",
    "test_cpus_holds_a_busy_loop_near_half_a_cpu",
    "test_scope_is_gone_after_rm",
    "test_weights_reservation_and_cpuset_reach_the_cgroup",
    "test_stats_reads_the_live_cgroup",
    "test_detached_oom_under_the_native_monitor",
    # tests/vm/inside/test_full_disk.py: a small ext4 disk that fills up
    "test_import_bigger_than_the_free_space",
    "test_load_on_a_full_disk",
    "test_pull_on_a_full_disk",
    "test_commit_on_a_full_disk",
    "test_run_and_create_on_a_full_disk",
    "test_container_that_fills_the_disk[foreground]",
    "test_container_that_fills_the_disk[detached]",
    "test_container_that_fills_the_disk[rm]",
    "test_record_write_on_a_full_disk",
)


def vm_image() -> Path:
    raw = os.environ.get("SANDBOX_TEST_VM_IMAGE", "")
    if not raw:
        helpers.missing(
            "vm", "SANDBOX_TEST_VM_IMAGE is not set (scripts/test.sh run as root builds it)"
        )
    path = Path(raw)
    if not (path / "disk.img").is_file():
        helpers.missing("vm", f"SANDBOX_TEST_VM_IMAGE={raw} has no disk.img")
    if shutil.which("qemu-system-x86_64") is None:
        helpers.missing("vm", "qemu-system-x86_64 is not installed (apt install qemu-system-x86)")
    return path


@pytest.fixture(scope="session")
def vm_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    image = vm_image()
    work = tmp_path_factory.mktemp("vm")
    tree = work / "tree"
    ignore = shutil.ignore_patterns("__pycache__", ".venv", ".nox", ".git", "*.egg-info")
    for part in ("sandbox", "tests", "pyproject.toml"):
        source = helpers.REPO / part
        if source.is_dir():
            shutil.copytree(source, tree / part, ignore=ignore)
        else:
            shutil.copy2(source, tree / part)
    # The registry binary for test_full_disk's pull (it links only libc; the guest has none).
    registry = Path("/usr/bin/docker-registry")
    if registry.is_file():
        (tree / "bin").mkdir()
        shutil.copy2(registry, tree / "bin" / registry.name)
    host_disk = work / "host.img"
    mke2fs = shutil.which("mke2fs") or "/usr/sbin/mke2fs"
    subprocess.run(
        [mke2fs, "-q", "-t", "ext4", "-L", "sbhost", "-d", str(tree), str(host_disk), "256M"],
        check=True,
    )
    results_disk = work / "results.img"
    with results_disk.open("wb") as f:
        f.truncate(64 << 20)
    # A private copy-on-write overlay: the cached image stays pristine.
    disk = work / "disk.qcow2"
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            str(image / "disk.img"),
            str(disk),
        ],
        check=True,
    )
    console = work / "console.log"
    argv = [
        "qemu-system-x86_64",
        "-accel",
        "tcg",
        "-smp",
        "2",
        "-m",
        "2048",
        "-no-reboot",
        "-kernel",
        str(image / "vmlinuz"),
        "-initrd",
        str(image / "initrd.img"),
        "-drive",
        f"file={disk},format=qcow2,if=virtio",
        "-append",
        "root=/dev/vda rw console=ttyS0 systemd.unified_cgroup_hierarchy=1 systemd.show_status=1"
        " systemd.wants=sandbox-tests.service",
        "-drive",
        f"file={host_disk},format=raw,if=virtio,readonly=on",
        "-drive",
        f"file={results_disk},format=raw,if=virtio",
        "-serial",
        f"file:{console}",
        "-monitor",
        "none",
        "-display",
        "none",
    ]
    with contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(
            argv,
            timeout=BOOT_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    log = console.read_text(errors="replace") if console.exists() else ""
    results = work / "results"
    results.mkdir()
    with contextlib.suppress(tarfile.TarError, OSError), tarfile.open(results_disk) as tar:
        # The guest is not trusted with our file system: no links out, no odd modes.
        members = [m for m in tar.getmembers() if m.isfile() and "/" not in m.name.lstrip("./")]
        for member in members:
            data = tar.extractfile(member)
            if data is not None:
                (results / member.name.lstrip("./")).write_bytes(data.read(1 << 20))
    report = results / "junit.xml"
    if not report.exists():
        pytest.fail(f"the VM left no test report; console tail:\n{log[-4000:]}", pytrace=False)
    outcomes: dict[str, str] = {}
    for case in ET.parse(report).iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = f"{child.tag}: {child.get('message', '')}\n{child.text or ''}"
        outcomes[case.get("name", "")] = outcome
    return outcomes


@pytest.mark.parametrize("name", INSIDE)
def test_in_vm(vm_results: dict[str, str], name: str) -> None:
    assert name in vm_results, f"{name} did not run in the VM: {sorted(vm_results)}"
    assert vm_results[name] == "passed", vm_results[name]
