"""The cgroup tests, run inside a real systemd VM and reported here, one test per in-VM test.

scripts/vm-image.sh (run as root by scripts/test.sh) builds a Debian bookworm image with
systemd, a lingering test user whose user manager has cpu, cpuset, io, memory and pids
delegated, and a oneshot unit that runs tests/vm/inside.sh. Here we boot it once per session
with qemu (TCG: KVM hangs on these machines), share this tree read-only and a results directory
over virtio-9p, and read back the JUnit report. SANDBOX_TEST_VM_IMAGE names the image
directory; without it the tests skip, or fail where CI requires the "vm" feature.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
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
    results = work / "results"
    results.mkdir()
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
        "root=/dev/vda rw console=ttyS0 systemd.unified_cgroup_hierarchy=1 quiet",
        "-virtfs",
        f"local,path={helpers.REPO},mount_tag=host,security_model=none,readonly=on",
        "-virtfs",
        f"local,path={results},mount_tag=results,security_model=none",
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
