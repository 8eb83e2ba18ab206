"""Pure logic of named networks: id maps relative to the holder's, network records, NAT bytes."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from sandbox.errors import UsageError
from sandbox.rootless import nftables
from sandbox.rootless.idmap import IdMapping, IdRange
from sandbox.rootless.userns import relative_to
from sandbox.runtime import network, networks

HOLDER = IdMapping(uids=(IdRange(0, 1001, 1), IdRange(1, 100000, 65536)),
                   gids=(IdRange(0, 1001, 1), IdRange(1, 100000, 65536)))  # fmt: skip


def test_the_default_mapping_is_the_identity_inside_the_holder() -> None:
    relative = relative_to(HOLDER, HOLDER)
    assert relative.uids == (IdRange(0, 0, 1), IdRange(1, 1, 65536))


def test_keep_id_is_re_expressed_in_the_holders_ids() -> None:
    # --userns=keep-id for uid 1001: container ids 0..1000 -> subids, 1001 -> 1001, then the rest.
    ranges = (IdRange(0, 100000, 1001), IdRange(1001, 1001, 1), IdRange(1002, 101001, 64535))
    kept = IdMapping(uids=ranges, gids=ranges)
    relative = relative_to(kept, HOLDER)
    for r in kept.uids:  # every container id lands on the same host id through the holder
        for inside in (r.inside, r.inside + r.size - 1):
            holder_id = next(
                x.outside + inside - x.inside
                for x in relative.uids
                if x.inside <= inside < x.inside + x.size
            )
            assert HOLDER.host_uid(holder_id) == kept.host_uid(inside)


def test_a_mapping_outside_the_holders_is_refused() -> None:
    foreign = IdMapping(uids=(IdRange(0, 5000, 1),), gids=(IdRange(0, 1001, 1),))
    with pytest.raises(Exception, match="not inside"):
        relative_to(foreign, HOLDER)


def test_network_names_and_subnets(tmp_path: Path) -> None:
    first = networks.create(tmp_path, "a")
    second = networks.create(tmp_path, "b")
    assert (first.subnet, first.gateway) == ("10.89.0.0/24", "10.89.0.1")
    assert second.subnet == "10.89.1.0/24" and first.bridge != second.bridge
    assert len(first.bridge) <= 15
    for bad in (
        ["a"],
        ["host"],
        ["x/y"],
        ["c", "10.89.0.0/25"],
        ["d", "10.0.2.0/24"],
        ["e", "nonsense"],
    ):
        with pytest.raises(UsageError):
            networks.create(tmp_path, *bad)
    assert [n.name for n in networks.list_networks(tmp_path)] == ["a", "b"]
    config = network.build("a")
    assert (config.mode, config.name) == ("bridge", "a")
    assert networks.resolve(tmp_path, config).subnet == "10.89.0.0/24"
    with pytest.raises(UsageError, match="no network named"):
        networks.resolve(tmp_path, network.build("zzz"))
    joined = network.build("container:web")
    assert (joined.mode, joined.name, joined.own_namespace) == ("container", "web", False)


def test_dnat_rule_carries_the_address_and_ports() -> None:
    rules = nftables.dnat_rules("tap0", [nftables.Forward("tcp", 8080, "10.89.0.2", 80)])
    blob = b"".join(rules[0])
    assert b"tap0" + b"\0" * 12 in blob
    assert bytes([10, 89, 0, 2]) in blob and struct.pack(">H", 8080) in blob
    assert struct.pack(">H", 80) in blob and b"nat\0" in blob
    data, acked = nftables.nat_batch("t", "prerouting", 0, -100, rules)
    assert len(acked) == 3 and data.count(b"t\0") >= 3
