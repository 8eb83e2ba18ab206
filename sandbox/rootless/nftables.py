"""A minimal nf_tables netlink client: the egress filter of one network namespace.

It builds the few messages `--egress-allow` needs (one inet table, one output chain with policy
drop, and rules made of meta/ct/payload/bitwise/cmp/immediate/reject expressions), sends them as
one batch (the kernel applies a batch atomically or not at all) and reads the acks. No `nft`
subprocess and no pyroute2 (its nftables layer cannot express ct state or reject, and importing
it costs ~300 ms): the wire format is small, stable and documented in
include/uapi/linux/netfilter/nf_tables.h, and the message bytes are unit-tested.

Named networks (runtime/networks.py) use it too, in the rootless network namespace: a nat
table that masquerades what leaves through slirp4netns's tap, and one DNAT table per container
for its published ports (deleted as a whole when the container ends).

The caller must already be in the target network namespace with CAP_NET_ADMIN over it.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Sequence

NETLINK_NETFILTER = 12
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_CREATE = 0x400
NLM_F_APPEND = 0x800
NLMSG_ERROR = 0x2
NLA_F_NESTED = 0x8000
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11
NFT_MSG_NEWTABLE = 0
NFT_MSG_NEWCHAIN = 3
NFT_MSG_NEWRULE = 6
NFPROTO_INET = 1
NFPROTO_IPV4 = 2
NFPROTO_IPV6 = 10
NF_DROP = 0
NF_ACCEPT = 1
NF_INET_LOCAL_OUT = 3
NFT_REG_VERDICT = 0
NFT_REG_1 = 1
NFT_META_OIF = 5
NFT_META_NFPROTO = 15
NFT_META_L4PROTO = 16
NFT_CT_STATE = 0
CT_ESTABLISHED_RELATED = 0x2 | 0x4  # NF_CT_STATE_BIT(IP_CT_ESTABLISHED) | ..._RELATED
NFT_PAYLOAD_NETWORK_HEADER = 1
NFT_PAYLOAD_TRANSPORT_HEADER = 2
NFT_CMP_EQ = 0
NFT_CMP_NEQ = 1
NFT_REJECT_TCP_RST = 1
NFT_REJECT_ICMPX_UNREACH = 2
NFT_REJECT_ICMPX_ADMIN_PROHIBITED = 3

TABLE = "sandbox_egress"
CHAIN = "output"


@dataclasses.dataclass(frozen=True)
class Allow:
    """Traffic to `network` (and, when given, only to `port` over TCP and UDP) is allowed."""

    network: str  # an IPv4 or IPv6 CIDR
    port: int | None = None


# ---------------------------------------------------------------------------------------------
# attribute and expression encoding


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _nested(kind: int, *children: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, b"".join(children))


def _string(kind: int, text: str) -> bytes:
    return _attr(kind, text.encode() + b"\0")


def _be32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack(">I", value))


def _data(kind: int, value: bytes) -> bytes:
    return _nested(kind, _attr(1, value))  # NFTA_DATA_VALUE


def _expr(name: str, *attrs: bytes) -> bytes:
    # NFTA_LIST_ELEM { NFTA_EXPR_NAME, NFTA_EXPR_DATA { ... } }
    return _nested(1, _string(1, name), _nested(2, *attrs))


def meta(key: int) -> bytes:
    return _expr("meta", _be32(1, NFT_REG_1), _be32(2, key))  # DREG, KEY


def cmp(op: int, value: bytes) -> bytes:
    return _expr("cmp", _be32(1, NFT_REG_1), _be32(2, op), _data(3, value))  # SREG, OP, DATA


def payload(base: int, offset: int, length: int) -> bytes:
    return _expr("payload", _be32(1, NFT_REG_1), _be32(2, base), _be32(3, offset), _be32(4, length))


def bitwise(mask: bytes) -> bytes:
    # SREG, DREG, LEN, MASK, XOR: reg1 = (reg1 & mask) ^ 0
    return _expr(
        "bitwise",
        _be32(1, NFT_REG_1),
        _be32(2, NFT_REG_1),
        _be32(3, len(mask)),
        _data(4, mask),
        _data(5, b"\0" * len(mask)),
    )


def ct(key: int) -> bytes:
    return _expr("ct", _be32(1, NFT_REG_1), _be32(2, key))  # DREG, KEY


def verdict(code: int) -> bytes:
    # IMMEDIATE_DREG = verdict register, IMMEDIATE_DATA { DATA_VERDICT { VERDICT_CODE } }
    return _expr("immediate", _be32(1, NFT_REG_VERDICT), _nested(2, _nested(2, _be32(1, code))))


def reject(kind: int, code: int = 0) -> bytes:
    return _expr("reject", _be32(1, kind), _attr(2, bytes([code])))  # TYPE, ICMP_CODE


# ---------------------------------------------------------------------------------------------
# the rule set


def _host_u32(value: int) -> bytes:
    return struct.pack("=I", value)  # meta and ct registers hold host byte order


def allow_rule(allow: Allow) -> list[list[bytes]]:
    """`ip[6] daddr NET [meta l4proto tcp|udp th dport PORT] accept`, one rule per protocol."""
    net = ipaddress.ip_network(allow.network, strict=False)
    if net.version == 4:
        match = [meta(NFT_META_NFPROTO), cmp(NFT_CMP_EQ, bytes([NFPROTO_IPV4]))]
        offset = 16  # iphdr.daddr
    else:
        match = [meta(NFT_META_NFPROTO), cmp(NFT_CMP_EQ, bytes([NFPROTO_IPV6]))]
        offset = 24  # ipv6hdr.daddr
    size = net.max_prefixlen // 8
    match.append(payload(NFT_PAYLOAD_NETWORK_HEADER, offset, size))
    if net.prefixlen != net.max_prefixlen:
        match.append(bitwise(net.netmask.packed))
    match.append(cmp(NFT_CMP_EQ, net.network_address.packed))
    if allow.port is None:
        return [[*match, verdict(NF_ACCEPT)]]
    rules = []
    for proto in (socket.IPPROTO_TCP, socket.IPPROTO_UDP):
        rules.append(
            [
                *match,
                meta(NFT_META_L4PROTO),
                cmp(NFT_CMP_EQ, bytes([proto])),
                payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2),  # tcphdr/udphdr.dest
                cmp(NFT_CMP_EQ, struct.pack(">H", allow.port)),
                verdict(NF_ACCEPT),
            ]
        )
    return rules


def ruleset(allowed: Sequence[Allow]) -> list[list[bytes]]:
    """The output chain's rules, in order: loopback, replies, each allowed target, refusal."""
    rules: list[list[bytes]] = [
        [meta(NFT_META_OIF), cmp(NFT_CMP_EQ, _host_u32(1)), verdict(NF_ACCEPT)],  # lo is 1
        [
            ct(NFT_CT_STATE),
            bitwise(_host_u32(CT_ESTABLISHED_RELATED)),
            cmp(NFT_CMP_NEQ, _host_u32(0)),
            verdict(NF_ACCEPT),
        ],
    ]
    for allow in allowed:
        rules += allow_rule(allow)
    # Refuse loudly (a reset, or "administratively prohibited"): a program fails at once
    # instead of waiting for a timeout. The chain's policy drops whatever is left.
    rules.append([meta(NFT_META_L4PROTO), cmp(NFT_CMP_EQ, bytes([socket.IPPROTO_TCP])), reject(1)])
    rules.append([reject(NFT_REJECT_ICMPX_UNREACH, NFT_REJECT_ICMPX_ADMIN_PROHIBITED)])
    return rules


def _message(kind: int, flags: int, seq: int, family: int, body: bytes, res_id: int = 0) -> bytes:
    header = struct.pack("=BBH", family, 0, socket.htons(res_id))  # struct nfgenmsg
    length = 16 + len(header) + len(body)
    return struct.pack("=IHHII", length, kind, flags, seq, 0) + header + body


def batch(allowed: Sequence[Allow], seq: int = 1) -> tuple[bytes, list[int]]:
    """The whole filter as one netlink batch; returns (bytes, the sequence numbers to ack)."""
    new = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE
    flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK
    messages = [_message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, 0, b"", NFNL_SUBSYS_NFTABLES)]
    acked = []
    seq += 1
    messages.append(_message(new, flags, seq, NFPROTO_INET, _string(1, TABLE)))  # TABLE_NAME
    acked.append(seq)
    chain = b"".join(
        [
            _string(1, TABLE),  # CHAIN_TABLE
            _string(3, CHAIN),  # CHAIN_NAME
            _nested(4, _be32(1, NF_INET_LOCAL_OUT), _be32(2, 0)),  # HOOK { HOOKNUM, PRIORITY }
            _be32(5, NF_DROP),  # CHAIN_POLICY
            _string(7, "filter"),  # CHAIN_TYPE
        ]
    )
    seq += 1
    new_chain = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWCHAIN
    messages.append(_message(new_chain, flags, seq, NFPROTO_INET, chain))
    acked.append(seq)
    new_rule = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE
    for expressions in ruleset(allowed):
        seq += 1
        body = _string(1, TABLE) + _string(2, CHAIN) + _nested(4, *expressions)
        messages.append(_message(new_rule, flags | NLM_F_APPEND, seq, NFPROTO_INET, body))
        acked.append(seq)
    seq += 1
    messages.append(_message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq, 0, b"", NFNL_SUBSYS_NFTABLES))
    return b"".join(messages), acked


def install(allowed: Sequence[Allow]) -> None:
    """Install the egress filter in the current network namespace; OSError when refused."""
    send(*batch(allowed))


def send(data: bytes, acked: list[int]) -> None:
    """Send one batch and wait for every ack; OSError with the kernel's errno when refused."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
        sock.bind((0, 0))
        sock.settimeout(5)
        sock.sendall(data)
        waiting = set(acked)
        while waiting:
            reply = sock.recv(65536)
            offset = 0
            while offset + 16 <= len(reply):
                length, kind, _flags, seq, _pid = struct.unpack_from("=IHHII", reply, offset)
                if length < 16:
                    break
                if kind == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", reply, offset + 16)
                    if code < 0:
                        raise OSError(-code, f"nf_tables: {os.strerror(-code)}")
                    waiting.discard(seq)
                offset += (length + 3) & ~3
            if not reply:
                raise OSError(errno.EPROTO, "nf_tables: no answer")


# ---------------------------------------------------------------------------------------------
# NAT in the rootless network namespace (named networks, runtime/networks.py)

NFT_MSG_DELTABLE = 2
NF_INET_PRE_ROUTING = 0
NF_INET_POST_ROUTING = 4
NFT_META_IIFNAME = 6
NFT_META_OIFNAME = 7
NFT_REG_2 = 2
NFT_NAT_DNAT = 1
IFNAMSIZ = 16
NAT_TABLE = "sandbox_nat"


def _ifname(name: str) -> bytes:
    return name.encode().ljust(IFNAMSIZ, b"\0")  # meta iifname/oifname compare 16 bytes


def immediate(register: int, value: bytes) -> bytes:
    return _expr("immediate", _be32(1, register), _data(2, value))  # DREG, DATA


def masq() -> bytes:
    return _expr("masq")


def dnat(address_register: int, port_register: int) -> bytes:
    # TYPE, FAMILY, REG_ADDR_MIN, REG_PROTO_MIN (the kernel sets MAP_IPS and PROTO_SPECIFIED)
    return _expr(
        "nat",
        _be32(1, NFT_NAT_DNAT),
        _be32(2, NFPROTO_IPV4),
        _be32(3, address_register),
        _be32(5, port_register),
    )


def masquerade_rules(uplink: str) -> list[list[bytes]]:
    """`oifname UPLINK masquerade`: what leaves through slirp4netns's tap gets its address."""
    return [[meta(NFT_META_OIFNAME), cmp(NFT_CMP_EQ, _ifname(uplink)), masq()]]


@dataclasses.dataclass(frozen=True)
class Forward:
    """Traffic arriving on `uplink` for `port`/`protocol` goes to address:to_port."""

    protocol: str  # tcp | udp
    port: int
    address: str  # IPv4
    to_port: int


def dnat_rules(uplink: str, forwards: Sequence[Forward]) -> list[list[bytes]]:
    """`iifname UPLINK meta l4proto P th dport PORT dnat to ADDRESS:TO_PORT`, one per forward."""
    rules = []
    for f in forwards:
        proto = socket.IPPROTO_TCP if f.protocol == "tcp" else socket.IPPROTO_UDP
        rules.append(
            [
                meta(NFT_META_IIFNAME),
                cmp(NFT_CMP_EQ, _ifname(uplink)),
                meta(NFT_META_L4PROTO),
                cmp(NFT_CMP_EQ, bytes([proto])),
                payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2),
                cmp(NFT_CMP_EQ, struct.pack(">H", f.port)),
                immediate(NFT_REG_1, ipaddress.IPv4Address(f.address).packed),
                immediate(NFT_REG_2, struct.pack(">H", f.to_port)),
                dnat(NFT_REG_1, NFT_REG_2),
            ]
        )
    return rules


def nat_batch(
    table: str, chain: str, hook: int, priority: int, rules: Sequence[list[bytes]], seq: int = 1
) -> tuple[bytes, list[int]]:
    """One batch: table ip TABLE, a nat chain on hook (policy accept), then rules."""
    flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK
    messages = [_message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, 0, b"", NFNL_SUBSYS_NFTABLES)]
    acked = []
    seq += 1
    new = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE
    messages.append(_message(new, flags, seq, NFPROTO_IPV4, _string(1, table)))
    acked.append(seq)
    body = b"".join(
        [
            _string(1, table),
            _string(3, chain),
            _nested(4, _be32(1, hook), _be32(2, priority & 0xFFFFFFFF)),
            _be32(5, NF_ACCEPT),
            _string(7, "nat"),
        ]
    )
    seq += 1
    messages.append(
        _message((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWCHAIN, flags, seq, NFPROTO_IPV4, body)
    )
    acked.append(seq)
    for expressions in rules:
        seq += 1
        body = _string(1, table) + _string(2, chain) + _nested(4, *expressions)
        new_rule = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE
        messages.append(_message(new_rule, flags | NLM_F_APPEND, seq, NFPROTO_IPV4, body))
        acked.append(seq)
    seq += 1
    messages.append(_message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq, 0, b"", NFNL_SUBSYS_NFTABLES))
    return b"".join(messages), acked


def delete_table_batch(table: str, seq: int = 1) -> tuple[bytes, list[int]]:
    flags = NLM_F_REQUEST | NLM_F_ACK
    messages = [
        _message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, 0, b"", NFNL_SUBSYS_NFTABLES),
        _message(
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELTABLE,
            flags,
            seq + 1,
            NFPROTO_IPV4,
            _string(1, table),
        ),
        _message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq + 2, 0, b"", NFNL_SUBSYS_NFTABLES),
    ]
    return b"".join(messages), [seq + 1]


def install_masquerade(uplink: str) -> None:
    """In the current network namespace: masquerade what leaves through uplink."""
    send(*nat_batch(NAT_TABLE, "postrouting", NF_INET_POST_ROUTING, 100, masquerade_rules(uplink)))


def install_forwards(table: str, uplink: str, forwards: Sequence[Forward]) -> None:
    """In the current network namespace: a table of DNAT rules (one container's ports)."""
    send(*nat_batch(table, "prerouting", NF_INET_PRE_ROUTING, -100, dnat_rules(uplink, forwards)))


def delete_table(table: str) -> None:
    send(*delete_table_batch(table))
