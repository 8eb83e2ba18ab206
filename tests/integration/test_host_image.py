"""`host` as an image name: the host's /usr, /etc, /lib* read-only, fresh /tmp and /home."""

from __future__ import annotations

import os

import pytest

from tests.helpers import SandboxEnv

pytestmark = pytest.mark.needs("userns", "subids", "newuidmap")


# Short test names: the fresh env lives under pytest's per-test directory, and slirp4netns's
# API socket path there must stay under the 108-byte sun_path limit.
def test_host_no_store(fresh_sandbox_env: SandboxEnv) -> None:
    env = fresh_sandbox_env
    done = env.run("run", "--rm", "host", "sh", "-c", "id; ls /")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("uid=0(root) gid=0(root)")
    assert {"usr", "etc", "tmp", "home", "proc", "dev"} <= set(lines[1:])
    # No image was pulled or stored: the store was never created.
    assert not (env.data_home / "sandbox" / "storage").exists()


def test_host_ro_fresh_tmp(fresh_sandbox_env: SandboxEnv) -> None:
    marker = fresh_sandbox_env.root / "home" / "marker"
    marker.write_text("mine")
    script = (
        "touch /usr/x 2>/dev/null && echo usr-writable; "
        "touch /etc/x 2>/dev/null && echo etc-writable; "
        "echo ok > /tmp/f && cat /tmp/f; ls -A /home | wc -l; "
        f"test -e {marker} && echo sees-host-home; "
        "cat /etc/os-release | head -1"
    )
    done = fresh_sandbox_env.run("run", "--rm", "host", "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert "usr-writable" not in out and "etc-writable" not in out
    assert out[:2] == ["ok", "0"]
    assert "sees-host-home" not in out
    with open("/etc/os-release") as f:
        assert out[2] == f.readline().rstrip("\n")
    # Nothing written inside reached the host.
    assert not os.path.exists("/usr/x")
