"""Container networking end to end, as an unprivileged user, with the real slirp4netns and pasta.

Every server and client here lives on the host's 127.0.0.1 or inside the containers the tests
start; the one exception, marked `debian_mirror`, reaches the Debian package mirror this
machine's apt uses (deb.debian.org), bounded by a timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import SandboxEnv, bin_dir_with, ok

Run = Callable[..., subprocess.CompletedProcess[str]]

pytestmark = pytest.mark.needs("userns", "subids", "newuidmap")
BACKENDS = [
    pytest.param("slirp4netns", marks=pytest.mark.needs("slirp4netns", "tun")),
    pytest.param("pasta", marks=pytest.mark.needs("pasta", "tun")),
]


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _background(env: SandboxEnv, *args: str) -> Iterator[subprocess.Popen[str]]:
    """`sandbox ARGS` running while the test talks to it; killed (whole session) afterwards."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sandbox", *args],
        env=env.env,
        text=True,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate(timeout=30)


def _connect_and_read(port: int, deadline: float, process: subprocess.Popen[str]) -> bytes:
    """Connect to 127.0.0.1:port until the container's server answers with some bytes."""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the container exited {process.returncode} early\n{out}\n{err}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
                data = conn.recv(100)
                if data:
                    return data
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail(f"nothing answered on 127.0.0.1:{port}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_published_tcp_port_answers_from_the_host(
    sandbox_env: SandboxEnv, busybox_image: str, backend: str
) -> None:
    port = _free_port()
    script = "while true; do echo hello-from-container | nc -l -p 8080; done"
    with _background(
        sandbox_env,
        "run", "--rm", "--network", backend, "-p", f"127.0.0.1:{port}:8080",
        busybox_image, "sh", "-c", script,
    ) as process:  # fmt: skip
        data = _connect_and_read(port, time.monotonic() + 60, process)
    assert data.strip() == b"hello-from-container"


@pytest.mark.needs("debian_rootfs")
@pytest.mark.parametrize("backend", BACKENDS)
def test_published_udp_port_receives_datagrams_from_the_host(
    sandbox_env: SandboxEnv, debian_image: str, backend: str
) -> None:
    port = _free_port(socket.SOCK_DGRAM)
    # busybox's nc has no UDP mode; Debian's perl-base does: print the first datagram, exit.
    server = (
        'use IO::Socket::INET; $s = IO::Socket::INET->new(LocalPort => 9999, Proto => "udp") '
        'or die "bind: $!"; $s->recv($m, 100); print $m;'
    )
    with _background(
        sandbox_env,
        "run", "--rm", "--network", backend, "-p", f"127.0.0.1:{port}:9999/udp",
        debian_image, "perl", "-e", server,
    ) as process:  # fmt: skip
        deadline = time.monotonic() + 60
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            while process.poll() is None and time.monotonic() < deadline:
                sock.sendto(b"ping\n", ("127.0.0.1", port))
                time.sleep(0.2)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "ping" in out


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_network_outlives_a_ctrl_c_the_container_handles(
    sandbox_env: SandboxEnv, busybox_image: str, backend: str
) -> None:
    """^C at a terminal signals the whole foreground process group: sandbox forwards it to the
    container, and the helper, in a group of its own, keeps serving while the container
    handles it (here: answering on its published port only after the interrupt)."""
    port = _free_port()
    script = (
        "trap 'echo after-interrupt | nc -l -p 8080; exit 3' INT; echo ready; "
        "while true; do sleep 0.1; done"
    )
    with _background(
        sandbox_env,
        "run", "--rm", "--network", backend, "-p", f"127.0.0.1:{port}:8080",
        busybox_image, "sh", "-c", script,
    ) as process:  # fmt: skip
        assert process.stdout is not None
        readable, _, _ = select.select([process.stdout], [], [], 60)
        assert readable and process.stdout.readline().strip() == "ready"
        os.killpg(process.pid, signal.SIGINT)  # what the terminal does on ^C
        data = _connect_and_read(port, time.monotonic() + 30, process)
        assert process.wait(timeout=30) == 3
    assert data.strip() == b"after-interrupt"


@contextlib.contextmanager
def _host_server() -> Iterator[int]:
    """A TCP server on the host's 127.0.0.1 that greets every client."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"host-says-hi\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join()
        server.close()


@pytest.mark.needs("slirp4netns", "tun")
def test_host_loopback_is_reachable_only_with_allow_host_loopback(
    sandbox: Run, busybox_image: str
) -> None:
    with _host_server() as port:
        probe = f"nc -w 3 10.0.2.2 {port} </dev/null"
        closed = sandbox("run", "--rm", busybox_image, "sh", "-c", probe)
        opened = sandbox(
            "run", "--rm", "--network", "slirp4netns:allow_host_loopback=true",
            busybox_image, "sh", "-c", probe,
        )  # fmt: skip
    assert "host-says-hi" not in closed.stdout
    assert "host-says-hi" in ok(opened)


@contextlib.contextmanager
def _host_sink(size: int) -> Iterator[tuple[int, list[bytes]]]:
    """A TCP server on the host's 127.0.0.1 that reads `size` bytes from one client, then
    closes; what it read lands in the list."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(60)
    received: list[bytes] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = server.accept()
            with conn:
                conn.settimeout(60)
                chunks, left = [], size
                while left > 0 and (chunk := conn.recv(min(left, 1 << 20))):
                    chunks.append(chunk)
                    left -= len(chunk)
                received.append(b"".join(chunks))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1]), received
    finally:
        thread.join(timeout=90)
        server.close()


@pytest.mark.needs("slirp4netns", "tun")
@pytest.mark.parametrize(("option", "mtu"), [("", "16384"), (",mtu=9000", "9000")])
def test_bulk_tcp_to_the_host_crosses_the_slirp4netns_link_intact(
    sandbox: Run, busybox_image: str, option: str, mtu: str
) -> None:
    # 8 MiB container -> host: many full segments at the link's MTU, through libslirp's TCP.
    size = 8 << 20
    expected = (b"0123456789abcde\n" * (size // 16 + 1))[:size]
    with _host_sink(size) as (port, received):
        out = ok(
            sandbox(
                "run", "--rm", "--network", f"slirp4netns:allow_host_loopback=true{option}",
                busybox_image, "sh", "-c",
                f"cat /sys/class/net/tap0/mtu; yes 0123456789abcde | head -c {size} "
                f"| nc 10.0.2.2 {port}",
            )
        )  # fmt: skip
    assert out.split() == [mtu]
    assert received == [expected]


@pytest.mark.needs("slirp4netns", "tun")
def test_a_bad_mtu_is_refused_before_anything_starts(sandbox: Run, busybox_image: str) -> None:
    result = sandbox("run", "--rm", "--network", "slirp4netns:mtu=70000", busybox_image, "true")
    assert result.returncode == 125
    assert "invalid --network option 'mtu=70000'" in result.stderr
    assert "Traceback" not in result.stderr
    assert ok(sandbox("ps", "-a")).splitlines()[1:] == []


def test_network_none_has_only_loopback(sandbox: Run, busybox_image: str) -> None:
    out = ok(sandbox("run", "--rm", "--network", "none", busybox_image, "ls", "/sys/class/net"))
    assert out.split() == ["lo"]


def test_network_host_shares_the_hosts_interfaces(sandbox: Run, busybox_image: str) -> None:
    out = ok(sandbox("run", "--rm", "--network", "host", busybox_image, "ls", "/sys/class/net"))
    assert sorted(out.split()) == sorted(os.listdir("/sys/class/net"))


@pytest.mark.needs("slirp4netns", "tun")
def test_default_network_has_a_tap_and_dns_forwarder(sandbox: Run, busybox_image: str) -> None:
    out = ok(
        sandbox(
            "run", "--rm", "--name", "netbox", "--add-host", "db.internal:10.0.2.50",
            "--dns-search", "example.test", busybox_image,
            "sh", "-c", "ls /sys/class/net; cat /sys/class/net/tap0/mtu /etc/resolv.conf "
            "/etc/hosts",
        )
    )  # fmt: skip
    assert "tap0" in out.split()
    assert "16384" in out.split()  # network.SLIRP4NETNS_MTU
    assert "nameserver 10.0.2.3" in out
    assert "search example.test" in out
    assert "10.0.2.50\tdb.internal" in out
    assert "netbox" in out


@pytest.mark.needs("slirp4netns", "tun")
def test_port_lists_the_containers_mappings(sandbox: Run, busybox_image: str) -> None:
    port = _free_port()
    ok(
        sandbox(
            "run", "--name", "ported", "-p", f"127.0.0.1:{port}:80", "-p", f"{port + 1}:81/udp",
            busybox_image, "true",
        )
    )  # fmt: skip
    try:
        out = ok(sandbox("port", "ported"))
        assert out.splitlines() == [
            f"80/tcp -> 127.0.0.1:{port}",
            f"81/udp -> 0.0.0.0:{port + 1}",
        ]
        assert ok(sandbox("port", "ported", "80")).strip() == f"127.0.0.1:{port}"
    finally:
        sandbox("rm", "-f", "ported")


@pytest.mark.needs("slirp4netns", "tun")
def test_port_in_use_fails_before_the_container_starts(sandbox: Run, busybox_image: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        done = sandbox(
            "run", "--rm", "-p", f"127.0.0.1:{port}:80", busybox_image, "sh", "-c", "echo ran",
        )  # fmt: skip
    assert done.returncode == 125
    assert "ran" not in done.stdout
    assert f"127.0.0.1:{port}" in done.stderr and "in use" in done.stderr
    assert "Traceback" not in done.stderr


def test_privileged_host_port_names_the_sysctl(sandbox: Run, busybox_image: str) -> None:
    lowest = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    if lowest <= 1:
        pytest.skip(
            f"net.ipv4.ip_unprivileged_port_start is {lowest} here, so no port is refused; "
            "set it to 1024 (its default) to run this test"
        )
    done = sandbox("run", "--rm", "-p", f"{lowest - 1}:80", busybox_image, "true")
    assert done.returncode == 125
    assert "net.ipv4.ip_unprivileged_port_start" in done.stderr


def test_missing_slirp4netns_names_the_package(
    sandbox_env: SandboxEnv, busybox_image: str, tmp_path: Path
) -> None:
    path = str(bin_dir_with(tmp_path, "newuidmap", "newgidmap"))
    done = sandbox_env.run(
        "run", "--rm", "--network", "slirp4netns", busybox_image, "true", env={"PATH": path}
    )
    assert done.returncode == 125, done.stderr
    assert "apt install slirp4netns" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.needs("tun")
def test_failing_slirp4netns_reports_its_log_and_leaves_nothing(
    sandbox_env: SandboxEnv, busybox_image: str, tmp_path: Path
) -> None:
    path = str(bin_dir_with(tmp_path, "newuidmap", "newgidmap"))
    fake = Path(path) / "slirp4netns"
    fake.write_text("#!/bin/sh\necho 'fake-slirp4netns: cannot open /dev/net/tun' >&2\nexit 1\n")
    fake.chmod(0o755)
    done = sandbox_env.run(
        "run", "--rm", "--name", "failnet", busybox_image, "echo", "ran", env={"PATH": path}
    )
    assert done.returncode == 125, done.stderr
    assert "ran" not in done.stdout
    assert "fake-slirp4netns: cannot open /dev/net/tun" in done.stderr
    assert "slirp4netns" in done.stderr
    listed = json.loads(ok(sandbox_env.run("ps", "-a", "--format", "json")))
    assert all("failnet" not in c["Names"] for c in listed)


def _helpers_for(container_id: str) -> list[int]:
    """Host pids of slirp4netns/pasta processes whose command line names this container."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            argv
            and argv[0].endswith((b"slirp4netns", b"pasta"))
            and any(container_id[:12].encode() in a for a in argv)
        ):
            found.append(int(entry))
    return found


@pytest.mark.parametrize("backend", BACKENDS)
def test_helper_dies_with_a_sigkilled_sandbox(
    sandbox_env: SandboxEnv, busybox_image: str, backend: str
) -> None:
    with _background(
        sandbox_env, "run", "--name", "killed", "--network", backend, busybox_image, "sleep", "60"
    ) as process:
        deadline = time.monotonic() + 60
        helpers: list[int] = []
        while not helpers and time.monotonic() < deadline:
            listed = json.loads(ok(sandbox_env.run("ps", "--format", "json")))
            ids = [c["Id"] for c in listed if "killed" in c["Names"]]
            helpers = _helpers_for(str(ids[0])) if ids else []
            time.sleep(0.2)
        assert helpers, f"{backend} never started"
        process.send_signal(signal.SIGKILL)  # sandbox only, not its session
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{p}").exists() for p in helpers) and time.monotonic() < deadline:
            time.sleep(0.1)
        alive = [p for p in helpers if Path(f"/proc/{p}").exists()]
    sandbox_env.run("rm", "-f", "killed")
    assert not alive, f"{backend} outlived sandbox: {alive}"


@pytest.mark.needs("slirp4netns", "tun", "debian_rootfs")
def test_debian_mirror_resolves_and_apt_get_update_succeeds(
    sandbox: Run, debian_image: str
) -> None:
    """Reaches deb.debian.org, the mirror this machine's apt uses: the one outside address."""
    done = sandbox(
        "run", "--rm", debian_image, "sh", "-c",
        "getent hosts deb.debian.org && apt-get -o Acquire::Retries=2 update",
        timeout=240,
    )  # fmt: skip
    out = ok(done)
    assert "deb.debian.org" in out
    assert "Reading package lists" in out
