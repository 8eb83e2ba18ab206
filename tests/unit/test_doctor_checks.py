"""sandbox.doctor: severities over the feature probes, and the exit decision."""

from __future__ import annotations

from typing import Any

from sandbox import doctor
from sandbox.rootless import features


def _fake(failing: set[str]) -> Any:
    def probe(name: str, *, use_cache: bool = True) -> features.Probe:
        if name in failing:
            return features.Probe(name, False, f"{name} is broken", fix=f"fix {name}")
        return features.Probe(name, True, f"{name} works")

    return probe


def test_every_probe_is_checked_once_in_chain_order() -> None:
    report = doctor.run(probe=_fake(set()))
    names = [c.name for c in report.checks]
    assert sorted(names) == sorted(features.NAMES)
    assert names[:4] == ["sysctls", "userns", "subids", "newuidmap"]
    assert not report.failed and report.run_possible


def test_missing_cgroup_delegation_is_a_warning_with_its_fix() -> None:
    report = doctor.run(probe=_fake({"cgroup2", "cgroup_delegation", "slirp4netns"}))
    by_name = {c.name: c for c in report.checks}
    assert by_name["cgroup_delegation"].status == doctor.WARNING
    assert by_name["cgroup_delegation"].fix == "fix cgroup_delegation"
    assert by_name["slirp4netns"].status == doctor.WARNING
    assert by_name["userns"].fix is None
    assert not report.failed and report.run_possible
    assert doctor.as_json(report)["counts"] == {
        "ok": len(features.NAMES) - 3,
        "warning": 3,
        "failed": 0,
    }


def test_missing_subids_fails_but_run_is_possible() -> None:
    report = doctor.run(probe=_fake({"subids"}))
    assert report.failed and report.run_possible


def test_no_user_namespaces_blocks_run() -> None:
    report = doctor.run(probe=_fake({"userns"}))
    assert report.failed and not report.run_possible
    assert doctor.as_json(report)["run_possible"] is False


def test_subids_probe_rejects_a_range_holding_the_users_own_id(tmp_path: Any) -> None:
    from sandbox.rootless import idmap

    user, uid, gid = idmap.current_user()
    subuid = tmp_path / "subuid"
    subgid = tmp_path / "subgid"
    subuid.write_text(f"{user}:{uid}:65536\n")
    subgid.write_text(f"{user}:{gid + 1}:65536\n")
    result = features._probe_subids(subuid, subgid)
    assert not result.ok
    assert "own id" in result.detail
    assert result.fix is not None and f"'{user}:100000:65536'" in result.fix
