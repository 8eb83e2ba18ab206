"""--network parsing and the container's /etc/resolv.conf and /etc/hosts."""

from __future__ import annotations

import pytest

from sandbox.errors import UsageError
from sandbox.runtime import network
from sandbox.runtime.network import NetworkConfig

HOST = "search corp.example lab.example\nnameserver 192.0.2.53\noptions edns0\n"
STUB = "nameserver 127.0.0.53\nsearch corp.example\n"
UPSTREAMS = "nameserver 198.51.100.1\nnameserver 127.0.0.1\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("none", ("none", False, 0)),
        ("host", ("host", False, 0)),
        ("pasta", ("pasta", False, 0)),
        ("slirp4netns", ("slirp4netns", False, 0)),
        ("slirp4netns:allow_host_loopback=true", ("slirp4netns", True, 0)),
        ("slirp4netns:mtu=9000,allow_host_loopback=false", ("slirp4netns", False, 9000)),
        ("slirp4netns:mtu=68", ("slirp4netns", False, 68)),
        ("slirp4netns:mtu=65521", ("slirp4netns", False, 65521)),
    ],
)
def test_parse_network(text: str, expected: tuple[str, bool, int]) -> None:
    assert network.parse_network(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "bridge",
        "pasta:allow_host_loopback=true",
        "slirp4netns:x=1",
        "slirp4netns:mtu=67",
        "slirp4netns:mtu=65522",
        "slirp4netns:mtu=-1",
        "slirp4netns:mtu=",
        "slirp4netns:mtu=9k",
        "pasta:mtu=9000",
    ],
)
def test_parse_network_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        network.parse_network(text)


def test_link_mtu_is_each_helpers_default_unless_given() -> None:
    # libslirp's unscaled 64 KiB window must hold several segments (network.SLIRP4NETNS_MTU).
    assert NetworkConfig("slirp4netns").link_mtu * 4 <= 65535 + 4 * 40
    assert NetworkConfig("slirp4netns", mtu=9000).link_mtu == 9000
    assert NetworkConfig("pasta").link_mtu == 65520


def test_default_is_slirp4netns_where_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    installed: set[str] = {"slirp4netns", "pasta"}
    monkeypatch.setattr(network.shutil, "which", lambda name: name if name in installed else None)
    assert network.default_mode() == "slirp4netns"
    installed.discard("slirp4netns")
    assert network.default_mode() == "pasta"
    installed.clear()
    assert network.default_mode() == "none"


def test_slirp4netns_resolv_conf_uses_its_forwarder_and_the_hosts_search() -> None:
    text = network.resolv_conf(NetworkConfig("slirp4netns"), host=HOST, upstreams="")
    assert text.splitlines() == ["search corp.example lab.example", "nameserver 10.0.2.3",
                                 "options edns0"]  # fmt: skip


def test_stub_resolver_host_gets_systemd_resolveds_upstreams() -> None:
    text = network.resolv_conf(NetworkConfig("slirp4netns"), host=STUB, upstreams=UPSTREAMS)
    assert text.splitlines()[1:] == ["nameserver 10.0.2.3", "nameserver 198.51.100.1"]
    assert "127.0.0" not in text
    assert "search corp.example" in text


def test_pasta_uses_its_dns_forward_address() -> None:
    text = network.resolv_conf(NetworkConfig("pasta"), host=STUB, upstreams="")
    assert "nameserver 169.254.1.1" in text.splitlines()


def test_dns_options_replace_servers_and_search() -> None:
    config = NetworkConfig("slirp4netns", dns=("192.0.2.1",), dns_search=("a.test",))
    text = network.resolv_conf(config, host=HOST, upstreams="")
    assert text.splitlines()[:2] == ["search a.test", "nameserver 192.0.2.1"]


def test_hosts_file_names_the_container_and_extra_hosts() -> None:
    config = NetworkConfig("slirp4netns", extra_hosts=(("db", "10.0.2.50"),))
    text = network.hosts_file(config, "abc123", "web")
    assert "127.0.0.1\tlocalhost" in text
    assert "10.0.2.50\tdb\n" in text
    assert "10.0.2.100\tabc123 web\n" in text


def test_host_network_keeps_the_hosts_own_entries() -> None:
    text = network.hosts_file(NetworkConfig("host"), "box", "box", host="192.0.2.9 printer")
    assert text.startswith("192.0.2.9 printer\n")
    assert "127.0.1.1\tbox\n" in text


@pytest.mark.parametrize("text", ["db", "db:", ":10.0.0.1", "db:not-an-ip"])
def test_add_host_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        network.parse_add_host(text)


def test_missing_helper_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(network.shutil, "which", lambda name: None)
    from sandbox.errors import HostError

    with pytest.raises(HostError) as caught:
        network.build("pasta")
    assert caught.value.hint is not None and "apt install passt" in caught.value.hint
