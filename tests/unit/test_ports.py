"""-p parsing and validation: addresses, ranges, protocols, privileged ports, ports in use."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from sandbox.errors import UsageError
from sandbox.runtime import network
from sandbox.runtime.network import PortMapping


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("80", [PortMapping("0.0.0.0", 80, 80)]),
        ("8080:80", [PortMapping("0.0.0.0", 8080, 80)]),
        ("127.0.0.1:8080:80", [PortMapping("127.0.0.1", 8080, 80)]),
        ("127.0.0.1::80/udp", [PortMapping("127.0.0.1", 80, 80, "udp")]),
        ("[::1]:8080:80", [PortMapping("::1", 8080, 80)]),
        (
            "8000-8001:80-81/udp",
            [PortMapping("0.0.0.0", 8000, 80, "udp"), PortMapping("0.0.0.0", 8001, 81, "udp")],
        ),
    ],
)
def test_parse_publish(text: str, expected: list[PortMapping]) -> None:
    assert network.parse_publish(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "abc", "80/sctp", "1:2:3:4", "0:80", "70000", "8000-8002:80-81", "host:80:80", "90-80"],
)
def test_parse_publish_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        network.parse_publish(text)


def test_mapping_prints_as_podman_port_does() -> None:
    assert str(PortMapping("127.0.0.1", 8080, 80)) == "80/tcp -> 127.0.0.1:8080"


def test_privileged_port_names_the_sysctl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(network, "unprivileged_port_start", lambda: 1024)
    with pytest.raises(UsageError) as caught:
        network.build("slirp4netns", ["127.0.0.1:80:8080"])
    assert "net.ipv4.ip_unprivileged_port_start" in str(caught.value)
    assert caught.value.hint and "1024" in caught.value.hint


def test_unprivileged_port_start_reads_the_sysctl(tmp_path: Path) -> None:
    path = tmp_path / "start"
    path.write_text("1024\n")
    assert network.unprivileged_port_start(path) == 1024
    assert network.unprivileged_port_start(tmp_path / "missing") == 1024


def test_publishing_the_same_host_port_twice_is_refused() -> None:
    with pytest.raises(UsageError, match="twice"):
        network.build("slirp4netns", ["127.0.0.1:40000:80", "127.0.0.1:40000:81"])


def test_ports_need_a_network_that_can_publish() -> None:
    with pytest.raises(UsageError, match="--network none"):
        network.build("none", ["40000:80"])


def test_port_in_use_is_found_by_binding_it() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(UsageError) as caught:
            network.check_ports_free([PortMapping("127.0.0.1", port, 80)])
    assert f"127.0.0.1:{port}" in str(caught.value)
    network.check_ports_free([PortMapping("127.0.0.1", port, 80)])  # free again
