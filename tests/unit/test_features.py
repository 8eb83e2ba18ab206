"""sandbox.rootless.features: every probe answers (never raises), names its fix, and caches
only successes, per boot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sandbox.rootless import features, idmap

EXPECTED = {
    "userns",
    "subids",
    "newuidmap",
    "overlay_userns",
    "tun",
    "fuse",
    "slirp4netns",
    "pasta",
    "fuse-overlayfs",
    "cgroup2",
    "sysctls",
    "xdg_runtime",
    "linger",
    "cgroup_delegation",
    "user_bus",
    "storage_fs",
    "unprivileged_ports",
    "nested",
    "nftables",
    "podman",
    "native_monitor",
    "pod_infra",
}


def test_names_are_the_documented_probes() -> None:
    assert set(features.NAMES) == EXPECTED
    assert len(features.NAMES) == len(EXPECTED)


def test_unknown_probe_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        features.probe("no-such-feature")


def test_probe_all_answers_every_probe_on_this_host() -> None:
    results = features.probe_all(use_cache=False)
    assert [r.name for r in results] == list(features.NAMES)
    for r in results:
        assert isinstance(r.ok, bool)
        assert r.detail, r
        if not r.ok:
            assert r.fix or r.name in ("userns", "overlay_userns"), r


def test_missing_binary_names_the_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    pasta = features.probe("pasta")
    assert not pasta.ok
    assert pasta.fix == "apt install passt"
    assert features.probe("newuidmap").fix == "apt install uidmap"


def test_missing_device_says_how_to_load_it() -> None:
    result = features._probe_device("tun", "/nonexistent/tun", "test")
    assert not result.ok
    assert "does not exist" in result.detail
    assert result.fix == "modprobe tun (as root)"


def _subid_files(tmp_path: Path, uid_line: str, gid_line: str) -> tuple[Path, Path]:
    subuid, subgid = tmp_path / "subuid", tmp_path / "subgid"
    subuid.write_text(f"someone-else:200000:65536\n{uid_line}")
    subgid.write_text(gid_line)
    return subuid, subgid


def test_subids_present(tmp_path: Path) -> None:
    user, _, _ = idmap.current_user()
    files = _subid_files(tmp_path, f"{user}:100000:65536\n", f"{user}:100000:65536\n")
    result = features._probe_subids(*files)
    assert result.ok, result
    assert "100000-165535" in result.detail


def test_subids_missing_names_the_line_to_add(tmp_path: Path) -> None:
    user, _, _ = idmap.current_user()
    subuid, subgid = _subid_files(tmp_path, "", f"{user}:100000:1000\n")
    result = features._probe_subids(subuid, subgid)
    assert not result.ok
    assert f"no subordinate uids for {user} in {subuid}" in result.detail
    assert "only 1000 subordinate gids" in result.detail
    assert result.fix is not None
    assert f"'{user}:100000:65536'" in result.fix
    assert str(subuid) in result.fix and str(subgid) in result.fix


MOUNTINFO_UNIFIED = "35 24 0:30 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n"
MOUNTINFO_HYBRID = (
    "25 24 0:22 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755\n"
    "26 25 0:23 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
    "27 25 0:24 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
)
MOUNTINFO_LEGACY = "27 25 0:24 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"


@pytest.mark.parametrize(
    ("text", "layout"),
    [
        (MOUNTINFO_UNIFIED, ("unified", "/sys/fs/cgroup")),
        (MOUNTINFO_HYBRID, ("hybrid", "/sys/fs/cgroup/unified")),
        (MOUNTINFO_LEGACY, ("legacy", "/sys/fs/cgroup")),
        ("", ("none", "")),
    ],
)
def test_cgroup_layout(text: str, layout: tuple[str, str]) -> None:
    assert features.cgroup_layout(text) == layout


def test_cgroup2_hybrid_says_limits_cannot_be_enforced(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(MOUNTINFO_HYBRID)
    result = features._probe_cgroup2(mountinfo, tmp_path)
    assert not result.ok
    assert result.detail.startswith("hybrid layout")
    assert result.fix is not None and "cannot be enforced" in result.fix


def _cache(runtime: Path) -> Path:
    return runtime / "sandbox" / features.CACHE_FILE


def test_cached_success_is_reused_within_a_boot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    boot_id = features.BOOT_ID.read_text().strip()
    cache = _cache(tmp_path)
    cache.parent.mkdir(mode=0o700)
    entry = {"ok": True, "detail": "from the cache", "fix": None}
    cache.write_text(json.dumps({"boot_id": boot_id, "probes": {"userns": entry}}))
    assert features.probe("userns").detail == "from the cache"
    assert features.probe("userns", use_cache=False).detail != "from the cache"
    cache.write_text(json.dumps({"boot_id": "another boot", "probes": {"userns": entry}}))
    assert features.probe("userns").detail != "from the cache"


def test_failures_are_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setitem(
        features._PROBES, "userns", lambda: features.Probe("userns", False, "refused")
    )
    assert not features.probe("userns").ok
    cache = _cache(tmp_path)
    probes = json.loads(cache.read_text())["probes"] if cache.exists() else {}
    assert "userns" not in probes


def test_a_probe_that_raises_answers_not_ok(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> features.Probe:
        raise RuntimeError("the host is on fire")

    monkeypatch.setitem(features._PROBES, "tun", broken)
    result = features.probe("tun")
    assert not result.ok
    assert "RuntimeError: the host is on fire" in result.detail


def test_command_line_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = features.main(["--json", "--no-cache", "pasta", "cgroup2"])
    printed = json.loads(capsys.readouterr().out)
    assert [p["name"] for p in printed] == ["pasta", "cgroup2"]
    assert code == (0 if all(p["ok"] for p in printed) else 1)
    assert features.main(["nonsense"]) == 2
