"""--egress-allow parsing and the nf_tables messages it becomes (the kernel side is tested in
tests/integration/test_network_egress.py)."""

from __future__ import annotations

import dataclasses
import struct

import pytest

from sandbox.errors import UsageError
from sandbox.rootless import nftables
from sandbox.runtime import network


@pytest.mark.parametrize(
    ("text", "networks", "port"),
    [
        ("10.0.2.2", ("10.0.2.2/32",), None),
        ("10.0.2.2/32:8080", ("10.0.2.2/32",), 8080),
        ("192.168.1.7/16", ("192.168.0.0/16",), None),
        ("fd00::/8", ("fd00::/8",), None),
        ("[fd00::1/128]:53", ("fd00::1/128",), 53),
    ],
)
def test_parse_cidr_and_port(text: str, networks: tuple[str, ...], port: int | None) -> None:
    rule = network.parse_egress(text)
    assert rule.networks == networks and rule.port == port and rule.hostname is None


def test_hostname_is_resolved_on_the_host() -> None:
    rule = network.parse_egress("localhost:443")
    assert rule.hostname == "localhost" and rule.port == 443
    assert "127.0.0.1/32" in rule.networks


@pytest.mark.parametrize("text", ["", "10.0.2.2:0", "10.0.2.2:99999", "a b", "[fd00::1", "x:y"])
def test_bad_egress_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError):
        network.parse_egress(text, resolve=False)


def test_hosts_file_pins_allowed_names() -> None:
    rule = network.EgressAllow("mirror.example", ("192.0.2.10/32",), 80)
    config = network.NetworkConfig("slirp4netns", egress=(rule,))
    assert "192.0.2.10\tmirror.example\n" in network.hosts_file(config, "h", "n")


def test_only_what_is_listed_is_allowed_dns_included() -> None:
    config = network.NetworkConfig("slirp4netns", egress=(network.parse_egress("10.0.2.2:80"),))
    assert network.egress_allowed(config) == [nftables.Allow("10.0.2.2/32", 80)]
    opened = (network.parse_egress("10.0.2.2:80"), network.parse_egress("10.0.2.3:53"))
    assert network.egress_allowed(dataclasses.replace(config, egress=opened)) == [
        nftables.Allow("10.0.2.2/32", 80),
        nftables.Allow("10.0.2.3/32", 53),
    ]


def _messages(data: bytes) -> list[tuple[int, int, int]]:
    """(type, flags, seq) of each netlink message in a batch."""
    out = []
    offset = 0
    while offset < len(data):
        length, kind, flags, seq, _ = struct.unpack_from("=IHHII", data, offset)
        assert length >= 20 and length % 4 == 0
        out.append((kind, flags, seq))
        offset += length
    assert offset == len(data)
    return out


def test_batch_is_table_chain_then_rules_between_begin_and_end() -> None:
    allowed = [nftables.Allow("10.0.2.2/32", 8080), nftables.Allow("fd00::/8")]
    data, acked = nftables.batch(allowed)
    kinds = [kind for kind, _, _ in _messages(data)]
    rule = (nftables.NFNL_SUBSYS_NFTABLES << 8) | nftables.NFT_MSG_NEWRULE
    # lo, established, 2 (tcp+udp) for the port rule, 1 for the CIDR, tcp reset, icmpx
    assert kinds == [0x10, 0xA00, 0xA03] + [rule] * 7 + [0x11]
    assert acked == [seq for _, flags, seq in _messages(data) if flags & nftables.NLM_F_ACK]


def test_ipv6_rule_matches_the_destination_at_offset_24_with_its_mask() -> None:
    (rule,) = nftables.allow_rule(nftables.Allow("fd00::/8"))
    joined = b"".join(rule)
    assert nftables.payload(nftables.NFT_PAYLOAD_NETWORK_HEADER, 24, 16) in joined
    assert nftables.bitwise(b"\xff" + b"\0" * 15) in joined


def test_host_route_has_no_mask() -> None:
    (rule,) = nftables.allow_rule(nftables.Allow("10.0.2.2/32"))
    assert b"bitwise" not in b"".join(rule)
