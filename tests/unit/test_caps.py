"""Capability names and sets, as podman computes them."""

from __future__ import annotations

import pytest

from sandbox.errors import UsageError
from sandbox.rootless import caps, rlimits


def test_default_set_is_podmans() -> None:
    assert caps.to_hex(caps.resolve()) == "00000000800405fb"


def test_names_with_or_without_cap_and_all() -> None:
    assert caps.resolve(drop=["ALL"]) == ()
    assert caps.resolve(drop=["all"], add=["cap_net_raw"]) == ("NET_RAW",)
    assert "CHOWN" not in caps.resolve(drop=["CAP_CHOWN"])
    assert caps.resolve(add=["ALL"]) == caps.all_names()
    assert caps.resolve(privileged=True) == caps.all_names()
    with pytest.raises(UsageError):
        caps.resolve(add=["CAP_BOGUS"])


def test_ulimit_parsing() -> None:
    assert rlimits.parse("nofile=100:200") == rlimits.Rlimit("nofile", 100, 200)
    assert rlimits.parse("RLIMIT_NPROC=50") == rlimits.Rlimit("nproc", 50, 50)
    assert rlimits.parse("core=-1").hard == rlimits.UNLIMITED
    for bad in ("nofile", "nofile=x", "nofile=10:5", "bogus=1"):
        with pytest.raises(UsageError):
            rlimits.parse(bad)
