"""The kernel fact named networks are designed around (docs/architecture.md, "Named networks"):
a process in the rootless netns's user namespace can move a veth end into a container's network
namespace only when the container's user namespace is a child of its own, not a sibling."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from sandbox.rootless import syscalls

pytestmark = pytest.mark.needs("userns")


def _hold() -> int:  # pragma: no cover - keeps a namespace alive until killed
    time.sleep(60)
    return 0


def _wait_for(fd: int) -> None:
    assert os.read(fd, 1) == b"x"


def _veth_into(fd: int) -> int:  # pragma: no cover - runs in the forked "R"
    """0, or the errno of creating a veth pair whose peer goes into the netns fd names."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with IPRoute() as ip:
            ip.link("add", ifname="v0", kind="veth", peer={"ifname": "eth0", "net_ns_fd": fd})
    except NetlinkError as e:
        return int(e.code)
    finally:
        os.close(fd)
    return 0


def _namespaced(flags: int, body: object) -> tuple[int, int]:
    """Fork a child that unshares `flags`, says ready and runs body(); (pid, ready fd)."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 99
        try:
            os.close(ready_r)
            uid, gid = os.geteuid(), os.getegid()
            syscalls.unshare(flags)
            # Map ourselves (as `unshare -r` does): an unmapped creator cannot nest one more.
            Path("/proc/self/setgroups").write_text("deny")
            Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
            Path("/proc/self/gid_map").write_text(f"0 {gid} 1")
            os.write(ready_w, b"x")
            code = body()  # type: ignore[operator]
        finally:
            os._exit(code)
    os.close(ready_w)
    return pid, ready_r


def _status(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_veth_peer_crosses_into_a_child_user_namespace_but_not_a_sibling() -> None:
    pytest.importorskip("pyroute2")
    userns_net = syscalls.CLONE_NEWUSER | syscalls.CLONE_NEWNET
    sibling, ready = _namespaced(userns_net, _hold)
    _wait_for(ready)
    # Opened here, by its owner (as the engine would, and pass on): R may not open it itself.
    sibling_net = os.open(f"/proc/{sibling}/ns/net", os.O_RDONLY)

    def rootless_netns() -> int:  # pragma: no cover - runs in the forked "R"
        child, child_ready = _namespaced(userns_net, _hold)
        _wait_for(child_ready)
        refused = _veth_into(sibling_net)
        allowed = _veth_into(os.open(f"/proc/{child}/ns/net", os.O_RDONLY))
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        return 10 * (refused == 1) + (allowed == 0)  # EPERM for the sibling, success else

    r, r_ready = _namespaced(userns_net, rootless_netns)
    _wait_for(r_ready)
    code = _status(r)
    os.close(sibling_net)
    os.kill(sibling, signal.SIGKILL)
    _status(sibling)
    assert code == 11, f"sibling refused (EPERM): {code // 10 == 1}, child allowed: {code % 10}"
