"""Named networks end to end, as an unprivileged user: the rootless netns holder, a bridge with a
veth per container, addresses, names in /etc/hosts, published ports through the holder's
slirp4netns, and the network commands' errors."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import SandboxEnv, netns_holder, ok

Run = Callable[..., subprocess.CompletedProcess[str]]

pytestmark = pytest.mark.needs("userns", "subids", "newuidmap", "slirp4netns", "tun", "nftables")
HTTPD = "mkdir -p /www && echo hello-from-{name} > /www/index.html && exec httpd -f -p 80 -h /www"


@pytest.fixture(scope="module", autouse=True)
def _no_holder_left(sandbox_env: SandboxEnv) -> Iterator[None]:
    """After this module: no network, so no holder or slirp4netns outlives the session."""
    yield
    for name in sandbox_env.run("network", "ls", "-q").stdout.split():
        sandbox_env.run("network", "rm", name)
    holder = netns_holder(sandbox_env)
    if holder is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(holder["pid"], signal.SIGKILL)


@pytest.fixture
def net(sandbox_env: SandboxEnv, sandbox: Run, busybox_image: str) -> Iterator[str]:
    """A fresh network; afterwards its containers and the network itself are removed."""
    name = f"net{os.getpid() % 1000}{time.monotonic_ns() % 100000}"
    ok(sandbox("network", "create", name))
    yield name
    for c in json.loads(ok(sandbox("ps", "-a", "--format", "json")) or "[]"):
        if any(str(n).startswith(f"{name}-") for n in c["Names"]):
            sandbox("rm", "-f", c["Id"])
    sandbox("network", "rm", name)


def _wait_http(url: str, deadline: float) -> str:
    error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                return str(answer.read().decode())
        except OSError as e:
            error = e
            time.sleep(0.2)
    pytest.fail(f"nothing answered on {url}: {error}")


def test_containers_on_a_named_network_reach_each_other_by_name(
    sandbox: Run, busybox_image: str, net: str
) -> None:
    server = f"{net}-web"
    # 8 MiB to fetch as well: many full frames at the bridge's MTU (networks.MTU).
    serve = "mkdir -p /www && head -c 8388608 /dev/zero > /www/big && " + HTTPD.format(name="web")
    ok(sandbox("run", "-d", "--name", server, "--network", net, busybox_image,
                "sh", "-c", serve))  # fmt: skip
    script = (
        "for i in $(seq 50); do wget -qO- http://" + server + "/ && break; sleep 0.1; done; "
        "ip -4 addr show eth0; ip route; cat /sys/class/net/eth0/mtu; "
        "wget -qO- http://" + server + "/big | md5sum"
    )
    out = ok(sandbox("run", "--rm", "--name", f"{net}-client", "--network", net,
                      busybox_image, "sh", "-c", script))  # fmt: skip
    assert "hello-from-web" in out
    assert "inet 10.89." in out and "default via 10.89." in out
    assert "\n16384\n" in out  # the uplink's MTU, network.SLIRP4NETNS_MTU
    assert hashlib.md5(bytes(8 << 20)).hexdigest() in out


def test_hosts_files_are_rewritten_in_place_when_a_peer_joins_and_leaves(
    sandbox: Run, busybox_image: str, net: str
) -> None:
    first, second = f"{net}-a", f"{net}-b"
    ok(sandbox("run", "-d", "--name", first, "--network", net, busybox_image, "sleep", "60"))
    inode_before = ok(sandbox("exec", first, "stat", "-c", "%i", "/etc/hosts"))
    ok(sandbox("run", "-d", "--name", second, "--network", net, busybox_image, "sleep", "60"))
    hosts = ok(sandbox("exec", first, "cat", "/etc/hosts"))
    assert second in hosts, hosts
    ok(sandbox("rm", "-f", second))
    hosts = ok(sandbox("exec", first, "cat", "/etc/hosts"))
    assert second not in hosts, hosts
    assert ok(sandbox("exec", first, "stat", "-c", "%i", "/etc/hosts")) == inode_before
    inspected = json.loads(ok(sandbox("network", "inspect", net)))[0]
    assert [c["name"] for c in inspected["containers"].values()] == [first]


def test_a_published_port_reaches_a_container_on_a_named_network(
    sandbox: Run, busybox_image: str, net: str
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    name = f"{net}-pub"
    ok(sandbox("run", "-d", "--name", name, "--network", net, "-p", f"127.0.0.1:{port}:80",
                busybox_image, "sh", "-c", HTTPD.format(name="pub")))  # fmt: skip
    assert _wait_http(f"http://127.0.0.1:{port}/", time.monotonic() + 30).strip() == (
        "hello-from-pub"
    )
    ok(sandbox("rm", "-f", name))
    # The forward went with the container: the host port is free again.
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
            try:
                s.bind(("127.0.0.1", port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def test_network_errors_and_the_holder_lifecycle(
    sandbox_env: SandboxEnv, sandbox: Run, busybox_image: str
) -> None:
    missing = sandbox("run", "--rm", "--network", "nosuchnet", busybox_image, "true")
    assert missing.returncode == 125
    assert "no network named 'nosuchnet'" in missing.stderr and "network create" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad = sandbox("network", "create", "--subnet", "10.0.2.0/24", "clash")
    assert bad.returncode == 125 and "overlaps" in bad.stderr
    assert sandbox("network", "create", "host").returncode == 125
    ok(sandbox("network", "create", "--subnet", "10.91.0.0/24", "life"))
    try:
        assert sandbox("network", "create", "life").returncode == 125
        ok(sandbox("run", "-d", "--name", "life-c", "--network", "life", busybox_image,
                    "sleep", "60"))  # fmt: skip
        busy = sandbox("network", "rm", "life")
        assert busy.returncode == 125 and "life-c" in busy.stderr
        ok(sandbox("rm", "-f", "life-c"))
        # A crashed holder is detected and replaced by the next container.
        holder = netns_holder(sandbox_env)
        assert holder is not None
        os.kill(holder["pid"], signal.SIGKILL)
        out = ok(sandbox("run", "--rm", "--network", "life", busybox_image,
                          "ip", "-4", "addr", "show", "eth0"))  # fmt: skip
        assert "10.91.0." in out
        replaced = netns_holder(sandbox_env)
        assert replaced is not None and replaced["pid"] != holder["pid"]
    finally:
        sandbox("rm", "-f", "life-c")
        ok(sandbox("network", "rm", "life"))
    if not [n for n in ok(sandbox("network", "ls", "-q")).split()]:
        # The last network removed: the holder and its slirp4netns are gone (reaped too).
        assert netns_holder(sandbox_env) is None
        pids = (replaced["pid"], replaced["slirp_pid"])
        deadline = time.monotonic() + 10
        while any(map(_state_and_parent, pids)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(map(_state_and_parent, pids)), [_state_and_parent(p) for p in pids]


def test_network_rm_counts_containers_not_running_and_force_removes_them(
    sandbox: Run, busybox_image: str, net: str
) -> None:
    # A created container would attach to the network at its start: it is a user too.
    ok(sandbox("create", "--name", f"{net}-later", "--network", net, busybox_image, "true"))
    ok(sandbox("run", "-d", "--name", f"{net}-now", "--network", net, busybox_image,
                "sleep", "60"))  # fmt: skip
    refused = sandbox("network", "rm", net)
    assert refused.returncode == 125
    assert f"{net}-later" in refused.stderr and f"{net}-now" in refused.stderr
    assert "network rm -f" in refused.stderr and "Traceback" not in refused.stderr
    assert net in ok(sandbox("network", "ls", "-q")).split()
    assert ok(sandbox("network", "rm", "-f", net)).split() == [net]
    assert net not in ok(sandbox("network", "ls", "-q")).split()
    names = ok(sandbox("ps", "-a", "--format", "{{.Names}}")).split()
    assert f"{net}-later" not in names and f"{net}-now" not in names
    missing = sandbox("network", "rm", "-f", net)
    assert missing.returncode == 125 and f"no network named {net!r}" in missing.stderr


# A long-lived command that starts the holder as `run` and the monitor do: a child subreaper
# (to wait for its container's PID 1) that stays alive after the holder has started.
STARTER = """
import sys
from sandbox.config import runtime_root
from sandbox.rootless import syscalls
from sandbox.runtime import networks

syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
holder = networks.ensure_holder(runtime_root())
assert syscalls.child_subreaper()
print(holder.pid, holder.slirp_pid, flush=True)
sys.stdin.read()
"""


def _state_and_parent(pid: int) -> tuple[str, int] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def test_network_rm_leaves_no_zombie_or_orphan_while_the_starter_lives(
    sandbox_env: SandboxEnv, sandbox: Run
) -> None:
    name = f"reap{os.getpid() % 1000}"
    for other in ok(sandbox("network", "ls", "-q")).split():  # the holder stops with the last
        ok(sandbox("network", "rm", other))
    ok(sandbox("network", "create", name))
    starter = subprocess.Popen(
        [sys.executable, "-c", STARTER],
        env=sandbox_env.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert starter.stdout is not None
        holder_pid, slirp_pid = map(int, starter.stdout.readline().split())
        for pid in (holder_pid, slirp_pid):
            found = _state_and_parent(pid)
            assert found is not None and found[0] != "Z", (pid, found)
            # Neither is the starter's child: it would keep them as zombies once they end.
            assert found[1] != starter.pid, f"{pid} is a child of the command that started it"
        ok(sandbox("network", "rm", name))
        deadline = time.monotonic() + 10
        left = {pid: _state_and_parent(pid) for pid in (holder_pid, slirp_pid)}
        while any(left.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
            left = {pid: _state_and_parent(pid) for pid in (holder_pid, slirp_pid)}
        # Gone altogether: not running on (an orphan) and not a zombie waiting for a reaper.
        assert not any(left.values()), f"left behind (state, parent): {left}"
        assert starter.poll() is None  # and the starter still runs, so nothing waited for it
        zombies = [
            pid
            for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
            if _state_and_parent(pid) == ("Z", starter.pid)
        ]
        assert zombies == []
    finally:
        starter.communicate("", timeout=30)
        sandbox("network", "rm", name)
