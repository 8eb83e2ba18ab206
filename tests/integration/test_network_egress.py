"""--egress-allow end to end: the filter in the container's own network namespace.

Both servers run on the host's 127.0.0.1; the container reaches them as 10.0.2.2 through
slirp4netns with allow_host_loopback, so one port can be allowed and the other refused.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest

from tests.helpers import ok
from tests.integration.test_network import _host_server

Run = Callable[..., subprocess.CompletedProcess[str]]

pytestmark = pytest.mark.needs("userns", "subids", "newuidmap", "slirp4netns", "tun", "nftables")
LOOPBACK = "slirp4netns:allow_host_loopback=true"


def _probe(port: int) -> str:
    return f"nc -w 3 10.0.2.2 {port} </dev/null && echo reached-{port} || echo refused-{port}"


def test_allowed_address_answers_and_a_second_one_is_refused(
    sandbox: Run, busybox_image: str
) -> None:
    with _host_server() as allowed, _host_server() as other:
        script = f"{_probe(allowed)}; {_probe(other)}"
        done = sandbox(
            "run", "--rm", "--network", LOOPBACK, "--egress-allow", f"10.0.2.2/32:{allowed}",
            busybox_image, "sh", "-c", script,
        )  # fmt: skip
        # The same container without the policy reaches both: the refusal is the filter's.
        both = sandbox("run", "--rm", "--network", LOOPBACK, busybox_image, "sh", "-c", script)
    out = ok(done)
    assert "host-says-hi" in out and f"reached-{allowed}" in out
    assert f"refused-{other}" in out
    assert f"reached-{other}" in ok(both)


def test_a_cidr_without_port_allows_every_port_of_it(sandbox: Run, busybox_image: str) -> None:
    with _host_server() as first, _host_server() as second:
        done = sandbox(
            "run", "--rm", "--network", LOOPBACK, "--egress-allow", "10.0.2.0/24",
            busybox_image, "sh", "-c", f"{_probe(first)}; {_probe(second)}",
        )  # fmt: skip
    out = ok(done)
    assert f"reached-{first}" in out and f"reached-{second}" in out


def test_the_container_cannot_change_its_network(sandbox: Run, busybox_image: str) -> None:
    # Lifting the rules needs CAP_NET_ADMIN over the namespace, as changing a route does.
    done = sandbox(
        "run", "--rm", "--egress-allow", "10.0.2.2/32:9", busybox_image,
        "sh", "-c", "ip route del default; echo rc=$?",
    )  # fmt: skip
    out = ok(done)
    assert "rc=0" not in out and "rc=" in out


def test_allowed_hostname_is_resolved_on_the_host_into_etc_hosts(
    sandbox: Run, busybox_image: str
) -> None:
    done = sandbox(
        "run", "--rm", "--egress-allow", "localhost:80", busybox_image, "cat", "/etc/hosts"
    )
    assert "127.0.0.1\tlocalhost\n" in ok(done)


@pytest.mark.parametrize(
    "extra",
    [["--cap-add", "NET_ADMIN"], ["--privileged"], ["--network", "host"]],
    ids=["cap-add", "privileged", "host"],
)
def test_egress_with_options_that_could_lift_it_is_refused(
    sandbox: Run, busybox_image: str, extra: list[str]
) -> None:
    done = sandbox("run", "--rm", *extra, "--egress-allow", "10.0.2.2/32", busybox_image, "true")
    assert done.returncode == 125
    assert "--egress-allow" in done.stderr and "Traceback" not in done.stderr


def test_unresolvable_egress_name_is_a_usage_error(sandbox: Run, busybox_image: str) -> None:
    done = sandbox(
        "run", "--rm", "--egress-allow", "no-such-host.invalid:443", busybox_image, "true"
    )
    assert done.returncode == 125
    assert "cannot resolve" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.needs("debian_rootfs")
def test_dns_is_refused_unless_allowed_like_anything_else(sandbox: Run, debian_image: str) -> None:
    # The resolver would relay any name (so any data) to the host's resolver and beyond.
    lookup = "getent hosts deb.debian.org && echo resolved || echo unresolved"
    closed = sandbox(
        "run", "--rm", "--egress-allow", "10.0.2.2/32:9", debian_image, "sh", "-c", lookup
    )  # fmt: skip
    opened = sandbox(
        "run", "--rm", "--egress-allow", "10.0.2.3:53", debian_image, "sh", "-c", lookup
    )  # fmt: skip
    assert ok(closed).split() == ["unresolved"]
    assert "deb.debian.org" in ok(opened) and "resolved" in opened.stdout.split()
