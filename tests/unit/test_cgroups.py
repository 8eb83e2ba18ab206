"""Unit tests for resource limits: option parsing, the cgroup v2 files they become, the
refusal of limits nobody can enforce, and the cgroupfs manager on a directory tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.errors import UsageError
from sandbox.rootless import cgroups
from sandbox.rootless.cgroups import resources
from sandbox.rootless.cgroups.cgroupfs import Cgroupfs


def files(r: cgroups.Resources) -> dict[str, str]:
    return {limit.file: limit.value for limit in r.limits()}


def test_limits_become_cgroup_v2_files():
    r = cgroups.from_options(
        memory="64m",
        memory_swap="128m",
        memory_reservation="32m",
        cpus="0.5",
        cpu_weight=200,
        cpuset_cpus="0-1",
        pids_limit=20,
        blkio_weight=500,
    )
    assert files(r) == {
        "memory.max": str(64 << 20),
        "memory.swap.max": str(64 << 20),
        "memory.low": str(32 << 20),
        "cpu.max": "50000 100000",
        "cpu.weight": "200",
        "cpuset.cpus": "0-1",
        "pids.max": "20",
        "io.weight": "default 4950",
    }
    assert r.controllers() == ["memory", "cpu", "cpuset", "pids", "io"]
    assert r.options() == (
        "--memory, --memory-swap, --memory-reservation, --cpus, --cpu-weight, "
        "--cpuset-cpus, --pids-limit, --blkio-weight"
    )


def test_podman_conversions():
    assert cgroups.from_options(cpu_shares=1024).cpu_weight == 39
    assert cgroups.from_options(cpu_shares=2).cpu_weight == 1
    assert cgroups.from_options(blkio_weight=10).io_weight == 1
    assert cgroups.from_options(blkio_weight=1000).io_weight == 10000
    assert files(cgroups.from_options(memory="1g", memory_swap="-1"))["memory.swap.max"] == "max"
    assert files(cgroups.from_options(pids_limit=-1))["pids.max"] == "max"
    assert cgroups.parse_size("--memory", "512k") == 512 << 10
    assert cgroups.parse_size("--memory", "1.5g") == 3 << 29
    assert cgroups.parse_size("--memory", "100000") == 100000
    assert cgroups.from_options().empty


@pytest.mark.parametrize(
    "options",
    [
        {"memory": "lots"},
        {"memory": "1m"},
        {"memory_swap": "64m"},
        {"memory": "64m", "memory_swap": "32m"},
        {"cpus": "0"},
        {"cpus": "half"},
        {"cpu_shares": 1},
        {"cpu_shares": 100, "cpu_weight": 100},
        {"cpu_weight": 0},
        {"cpuset_cpus": "0-a"},
        {"blkio_weight": 5},
    ],
)
def test_bad_limits_are_usage_errors(options):
    with pytest.raises(UsageError):
        cgroups.from_options(**options)


def test_cpuset_mask():
    assert resources.cpuset_mask("0-2,9") == bytes([0b111, 0b10])


def test_limits_without_a_manager_fail_with_reason_and_fix():
    warnings: list[str] = []
    manager = cgroups.Disabled("hybrid layout", "boot with cgroup v2")
    with pytest.raises(cgroups.CgroupError) as caught:
        cgroups.check(manager, cgroups.from_options(memory="64m"), warnings.append)
    assert caught.value.exit_code == 125
    assert "cannot enforce --memory" in str(caught.value)
    assert "hybrid layout" in str(caught.value)
    assert caught.value.hint is not None and "--cgroups=disabled" in caught.value.hint
    assert "boot with cgroup v2" in caught.value.hint
    assert warnings == []


def test_disabled_by_choice_warns_once():
    warnings: list[str] = []
    r = cgroups.from_options(memory="64m", pids_limit=5)
    assert not cgroups.check(cgroups.Disabled(chosen=True), r, warnings.append)
    assert warnings == [
        "--memory, --pids-limit not enforced: cgroups are disabled (--cgroups or config.yaml)"
    ]
    assert not cgroups.check(cgroups.Disabled("none"), cgroups.Resources(), warnings.append)
    assert len(warnings) == 1


def _fake_cgroup(tmp_path: Path, controllers: str) -> Path:
    parent = tmp_path / "job"
    parent.mkdir()
    (parent / "cgroup.controllers").write_text(controllers + "\n")
    (parent / "cgroup.subtree_control").write_text("")
    return parent


def test_controller_not_delegated_names_the_drop_in(tmp_path):
    manager = Cgroupfs(_fake_cgroup(tmp_path, "cpu memory"))
    with pytest.raises(cgroups.CgroupError) as caught:
        cgroups.check(manager, cgroups.from_options(pids_limit=20), print)
    assert "pids" in str(caught.value)
    assert caught.value.hint is not None and "user@.service.d" in caught.value.hint
    assert cgroups.check(manager, cgroups.from_options(memory="64m"), print)


def test_cgroupfs_enables_the_controllers_the_limits_need(tmp_path):
    parent = _fake_cgroup(tmp_path, "cpu memory pids")
    r = cgroups.from_options(memory="64m", pids_limit=20)
    Cgroupfs(parent)._enable(r.controllers())
    # A plain file stands in for cgroupfs here: it keeps what was written.
    assert (parent / "cgroup.subtree_control").read_text() == "+memory +pids"


def test_accounting_controllers_are_enabled_without_limits(tmp_path):
    from sandbox.rootless.cgroups import base

    # stats needs memory.current, pids.current and io.stat whatever the limits.
    assert base.to_enable(cgroups.from_options(), {"cpu", "memory", "pids"}) == ["memory", "pids"]
    limits = cgroups.from_options(cpus="0.5", pids_limit=5)
    assert base.to_enable(limits, {"cpu", "io", "memory", "pids"}) == [
        "cpu",
        "pids",
        "memory",
        "io",
    ]
    manager = Cgroupfs(_fake_cgroup(tmp_path, "cpu memory pids"))
    manager._enable(base.to_enable(cgroups.from_options(), manager.controllers()))
    assert (manager.parent / "cgroup.subtree_control").read_text() == "+memory +pids"


def test_cgroupfs_cleanup_removes_leftovers(tmp_path):
    parent = _fake_cgroup(tmp_path, "cpu memory pids")
    (parent / "sandbox-dead").mkdir()
    (parent / "sandbox-live").mkdir()
    (parent / "other").mkdir()
    Cgroupfs(parent).cleanup(["live"])
    assert sorted(p.name for p in parent.iterdir() if p.is_dir()) == ["other", "sandbox-live"]


def test_oom_killed_reads_memory_events(tmp_path):
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert cgroups.oom_killed(tmp_path)
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n")
    assert not cgroups.oom_killed(tmp_path)
    assert not cgroups.oom_killed(tmp_path / "gone")
