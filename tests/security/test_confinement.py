"""What a process inside a default container observes: capabilities, seccomp, masked paths,
rlimits, no_new_privs, and no descriptor or interpreter of the engine within reach."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import ok
from tests.security.conftest import fingerprint

Run = Callable[..., subprocess.CompletedProcess[str]]

pytestmark = pytest.mark.needs("unprivileged", "userns", "subids", "newuidmap")

DEFAULT_CAPS = "00000000800405fb"
EPERM, ENOSYS = 1, 38
# (name, x86_64 number, i386 number): calls Docker's default profile denies.
DENIED = [("keyctl", 250, 288), ("add_key", 248, 286), ("unshare", 272, 310), ("bpf", 321, 357)]


def _status(sandbox: Run, image: str, *options: str) -> dict[str, str]:
    out = ok(sandbox("run", "--rm", *options, image, "cat", "/proc/self/status"))
    return {k: v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}


def test_default_capabilities_seccomp_and_no_ambient(sandbox: Run, busybox_image: str) -> None:
    status = _status(sandbox, busybox_image)
    assert status["CapEff"] == DEFAULT_CAPS
    assert status["CapPrm"] == DEFAULT_CAPS
    assert status["CapBnd"] == DEFAULT_CAPS
    assert status["CapInh"] == "0000000000000000"
    assert status["CapAmb"] == "0000000000000000"
    assert status["Seccomp"] == "2"
    assert status["NoNewPrivs"] == "0"


def test_cap_drop_all_and_cap_add(sandbox: Run, busybox_image: str) -> None:
    assert _status(sandbox, busybox_image, "--cap-drop", "ALL")["CapEff"] == "0" * 16
    added = _status(sandbox, busybox_image, "--cap-drop", "all", "--cap-add", "CAP_NET_RAW")
    assert added["CapEff"] == f"{1 << 13:016x}"
    dropped = _status(sandbox, busybox_image, "--cap-drop", "chown")
    assert int(dropped["CapEff"], 16) == int(DEFAULT_CAPS, 16) & ~1


def test_privileged_gets_every_capability_and_no_seccomp(sandbox: Run, busybox_image: str) -> None:
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    status = _status(sandbox, busybox_image, "--privileged")
    assert int(status["CapEff"], 16) == (1 << (last + 1)) - 1
    assert status["Seccomp"] == "0"


def test_non_root_user_keeps_no_capabilities(sandbox: Run, busybox_image: str) -> None:
    status = _status(sandbox, busybox_image, "-u", "1000")
    assert status["CapEff"] == status["CapPrm"] == status["CapInh"] == "0" * 16
    assert status["CapBnd"] == DEFAULT_CAPS
    assert status["Seccomp"] == "2"


def test_denied_syscalls_fail_with_eperm_on_every_abi(
    sandbox: Run, busybox_image: str, sysprobe: Path
) -> None:
    probes = []
    for _name, nr64, nr32 in DENIED:
        probes += [f"/probe/sysprobe 64 {nr64}", f"/probe/sysprobe x32 {nr64}"]
        probes += [f"/probe/sysprobe 32 {nr32}"]
    # An unknown number on each entry, then getpid as the control.
    probes += ["/probe/sysprobe 64 1000", "/probe/sysprobe 32 1000", "/probe/sysprobe x32 1000"]
    probes += ["/probe/sysprobe 64 39", "/probe/sysprobe 32 20"]
    out = ok(
        sandbox(
            "run",
            "--rm",
            "-v",
            f"{sysprobe.parent}:/probe:ro",
            busybox_image,
            "sh",
            "-c",
            "; ".join(probes),
        )
    )
    results = out.splitlines()
    assert len(results) == len(probes), out
    for probe, result in zip(probes[: 3 * len(DENIED)], results, strict=False):
        assert result == f"errno {EPERM}", f"{probe}: {result}"
    assert results[3 * len(DENIED) : 3 * len(DENIED) + 3] == [f"errno {ENOSYS}"] * 3
    assert results[-2].startswith("ok ") and results[-1].startswith("ok ")


def test_unconfined_and_custom_profiles(
    sandbox: Run, busybox_image: str, sysprobe: Path, tmp_path: Path
) -> None:
    status = _status(sandbox, busybox_image, "--security-opt", "seccomp=unconfined")
    assert status["Seccomp"] == "0"
    profile = tmp_path / "profile.json"
    profile.write_text(
        '{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["getpid"],'
        ' "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}'
    )
    tmp_path.chmod(0o755)
    out = ok(
        sandbox(
            "run",
            "--rm",
            "--security-opt",
            f"seccomp={profile}",
            "-v",
            f"{sysprobe.parent}:/probe:ro",
            busybox_image,
            "sh",
            "-c",
            "/probe/sysprobe 64 39; /probe/sysprobe 32 20; /probe/sysprobe 64 250",
        )
    )
    # getpid is denied on both entries; what the profile does not name is allowed.
    assert out.split("\n")[:2] == ["errno 13", "errno 13"], out
    assert out.split("\n")[2] != f"errno {EPERM}", out


def test_masked_and_read_only_paths(sandbox: Run, busybox_image: str) -> None:
    script = (
        "for f in /proc/kcore /proc/keys /proc/timer_list /proc/sched_debug; do"
        "  [ -e $f ] && echo $f $(wc -c < $f); done;"
        "ls /sys/firmware | wc -l;"
        "echo x > /proc/sys/kernel/hostname 2>/dev/null && echo writable || echo ro;"
        "echo h > /proc/sysrq-trigger 2>/dev/null && echo writable || echo ro"
    )
    out = ok(sandbox("run", "--rm", busybox_image, "sh", "-c", script)).split("\n")
    sizes = [line for line in out if line.startswith("/proc/")]
    assert sizes and all(line.endswith(" 0") for line in sizes), out
    assert out[len(sizes) :][:3] == ["0", "ro", "ro"]
    count = "grep -c ' /proc/keys ' /proc/self/mountinfo; true"
    assert ok(sandbox("run", "--rm", busybox_image, "sh", "-c", count)).strip() == "1"
    privileged = ok(sandbox("run", "--rm", "--privileged", busybox_image, "sh", "-c", count))
    assert privileged.strip() == "0"


def test_ulimit_and_no_new_privileges(sandbox: Run, busybox_image: str) -> None:
    out = ok(
        sandbox(
            "run",
            "--rm",
            "--ulimit",
            "nofile=100:200",
            "--ulimit",
            "core=0",
            "--security-opt",
            "no-new-privileges",
            busybox_image,
            "sh",
            "-c",
            "grep -E 'open files|core file' /proc/self/limits; grep NoNew /proc/self/status",
        )
    )
    lines = [line.split() for line in out.splitlines()]
    assert lines[0][-3:] == ["0", "0", "bytes"]
    assert lines[1][-3:] == ["100", "200", "files"]
    assert lines[2] == ["NoNewPrivs:", "1"]


def test_bad_security_options_exit_125_with_a_hint(sandbox: Run, busybox_image: str) -> None:
    for options in (
        ["--cap-add", "CAP_BOGUS"],
        ["--ulimit", "nofile=10:5"],
        ["--ulimit", "nosuch=1"],
        ["--security-opt", "seccomp=/nonexistent.json"],
        ["--security-opt", "whatever"],
    ):
        done = sandbox("run", "--rm", *options, busybox_image, "true")
        assert done.returncode == 125, (options, done.stderr)
        assert "Traceback" not in done.stderr and done.stderr.startswith("Error: ")


def test_only_stdio_is_open_at_exec(sandbox: Run, busybox_image: str) -> None:
    # ls opens the directory itself: fd 3 is its own.
    for options in ([], ["--init"], ["-t"]):
        out = ok(sandbox("run", "--rm", *options, busybox_image, "ls", "/proc/self/fd"))
        assert out.split() == ["0", "1", "2", "3"], (options, out)


def test_cve_2019_5736_host_interpreter_out_of_reach(sandbox: Run, busybox_image: str) -> None:
    """runc CVE-2019-5736: overwrite the engine's binary through /proc/PID/exe."""
    interpreter = Path(sys.executable).resolve()
    before = fingerprint(interpreter)
    script = (
        "cat /proc/1/exe > /dev/null 2>&1 && echo readable;"
        "echo x 2>/dev/null > /proc/1/exe && echo written;"
        "readlink /proc/1/exe 2>/dev/null; ls /proc/1/fd 2>/dev/null | wc -l; true"
    )
    out = ok(sandbox("run", "--rm", "--init", busybox_image, "sh", "-c", script))
    assert "readable" not in out and "written" not in out
    assert str(interpreter) not in out
    assert fingerprint(interpreter) == before
