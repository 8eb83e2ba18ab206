"""--userns=keep-id: the user's own uid, gid, name and home inside (run and dev)."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from tests.helpers import SandboxEnv

pytestmark = pytest.mark.needs("userns", "subids", "newuidmap")


def test_run_keep_id_is_the_user(sandbox_env: SandboxEnv, busybox_image: str) -> None:
    me = pwd.getpwuid(os.getuid())
    script = "id -u; id -g; id -un; echo $HOME; pwd; cat /proc/self/uid_map"
    done = sandbox_env.run("run", "--rm", "--userns=keep-id", busybox_image, "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:5] == [str(os.getuid()), str(os.getgid()), me.pw_name, me.pw_dir, me.pw_dir]
    # The user's id is mapped to itself; the subordinate ids fill the rest around it.
    maps = [tuple(map(int, line.split())) for line in lines[5:]]
    assert (os.getuid(), os.getuid(), 1) in maps
    assert maps[0][0] == 0 and maps[0][1] != os.getuid()
    # Root of the image is still root by name; the image's passwd is kept.
    done = sandbox_env.run(
        "run", "--rm", "--userns=keep-id", busybox_image, "sh", "-c", "grep -c ^root: /etc/passwd"
    )
    assert done.stdout.strip() == "1", done.stderr


def test_run_keep_id_explicit_user_wins(sandbox_env: SandboxEnv, busybox_image: str) -> None:
    done = sandbox_env.run(
        "run", "--rm", "--userns=keep-id", "--user", "0", busybox_image, "id", "-u"
    )
    assert done.returncode == 0 and done.stdout.strip() == "0", done.stderr
    bad = sandbox_env.run("run", "--rm", "--userns=keep-me", busybox_image, "true")
    assert bad.returncode == 125 and "keep-id" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.needs("overlay_userns")
def test_dev_is_the_user(sandbox_env: SandboxEnv, busybox_image: str, tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    (project / "sandbox.yaml").write_text(f"image: {busybox_image}\n")
    me = pwd.getpwuid(os.getuid())
    file = str(project / "sandbox.yaml")
    try:
        done = sandbox_env.run(
            "dev",
            "-f",
            file,
            "kid",
            "--",
            "sh",
            "-c",
            "id -un; pwd; echo $HOME; touch /work/made-inside; touch $HOME/h && echo home-ok",
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == [me.pw_name, "/work", me.pw_dir, "home-ok"]
        made = (project / "made-inside").stat()
        assert (made.st_uid, made.st_gid) == (os.getuid(), os.getgid())
    finally:
        sandbox_env.run("dev", "rm", "kid")
        sandbox_env.run("volume", "rm", "dev-kid-home")
