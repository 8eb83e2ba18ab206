"""Profile handling: conditions, errors, and that the default profile compiles for each case."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sandbox.rootless import caps, seccomp


def test_default_profile_compiles_and_depends_on_capabilities() -> None:
    profile = seccomp.default_profile()
    default = seccomp.compile(profile, capabilities=caps.DEFAULT)
    admin = seccomp.compile(profile, capabilities=(*caps.DEFAULT, "SYS_ADMIN"))
    assert len(default) % 8 == 0 and len(default) > 800
    assert default != admin


def test_conditions() -> None:
    rule = {"includes": {"caps": ["CAP_SYS_ADMIN"], "minKernel": "4.8"}}
    assert seccomp._applies(rule, {"SYS_ADMIN"}, (6, 1), "x86_64")
    assert not seccomp._applies(rule, set(), (6, 1), "x86_64")
    assert not seccomp._applies(rule, {"SYS_ADMIN"}, (4, 4), "x86_64")
    assert not seccomp._applies({"excludes": {"arches": ["amd64"]}}, set(), (6, 1), "x86_64")
    assert seccomp._applies({"includes": {"arches": ["arm64"]}}, set(), (6, 1), "aarch64")


def test_arches_default_to_native_and_subarchitectures() -> None:
    assert seccomp.architectures({}, "x86_64") == [
        "SCMP_ARCH_X86_64",
        "SCMP_ARCH_X86",
        "SCMP_ARCH_X32",
    ]


@pytest.mark.parametrize(
    "profile",
    [
        {"defaultAction": "SCMP_ACT_NOPE"},
        {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "X"}]},
        {
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 9}]}],
        },
        {
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_NOTIFY"}],
        },
    ],
)
def test_bad_profiles_are_usage_errors(profile: dict[str, object]) -> None:
    with pytest.raises(seccomp.ProfileError):
        seccomp.compile(profile, capabilities=())


def test_load_profile_errors(tmp_path: Path) -> None:
    with pytest.raises(seccomp.ProfileError):
        seccomp.load_profile(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(seccomp.ProfileError):
        seccomp.load_profile(bad)
    example = Path(__file__).resolve().parents[2] / "examples" / "seccomp" / "deny-network.json"
    if example.exists():
        seccomp.compile(json.loads(example.read_text()), capabilities=caps.DEFAULT)
