"""`sandbox dev`: a persistent environment, entered, stopped, snapshotted and rolled back."""

from __future__ import annotations

import pytest

from tests.helpers import SandboxEnv

pytestmark = pytest.mark.needs("userns", "subids", "newuidmap", "overlay_userns")


def test_dev_keeps_files_across_stop_and_loses_them_after_rollback(
    sandbox_env: SandboxEnv, busybox_image: str
) -> None:
    run = sandbox_env.run

    def ok(*args: str) -> str:
        done = run(*args)
        assert done.returncode == 0, f"{args}: {done.stdout}{done.stderr}"
        return done.stdout

    try:
        ok("dev", "--image", busybox_image, "box", "--", "sh", "-c", "echo base > /tmp/base")
        assert ok("dev", "snapshot", "box", "clean").strip() == "clean"
        ok("dev", "box", "--", "sh", "-c", "echo kept > /tmp/later; mkdir -p /tmp/x; rm /tmp/base")
        assert "A /tmp/later" in ok("dev", "diff", "box")
        refused = run("dev", "rollback", "box", "clean")
        assert refused.returncode == 125 and "stop it first" in refused.stderr
        ok("dev", "stop", "box")
        assert "exited" in ok("dev", "ls")
        # Re-entering starts it again: the file is still there.
        assert ok("dev", "box", "--", "cat", "/tmp/later") == "kept\n"
        ok("dev", "stop", "box")
        assert "rolled back" in ok("dev", "rollback", "box", "clean")
        after = run("dev", "box", "--", "sh", "-c", "cat /tmp/base; test -e /tmp/later; echo $?")
        assert after.stdout.split() == ["base", "1"], after.stderr
        listing = ok("dev", "ls")
        assert "box" in listing and "clean" in listing
        # The exit code of the command is the dev command's.
        assert run("dev", "box", "--", "sh", "-c", "exit 7").returncode == 7
    finally:
        run("dev", "rm", "box")
    assert "box" not in ok("dev", "ls")


def test_dev_errors(sandbox_env: SandboxEnv) -> None:
    done = sandbox_env.run("dev", "stop", "nosuch")
    assert done.returncode == 125 and "no dev environment nosuch" in done.stderr
    done = sandbox_env.run("dev", "rollback", "nosuch")
    assert done.returncode == 125 and "Traceback" not in done.stderr
