"""--userns=keep-id: the user's own uid, gid, name and home inside (run and dev)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import SandboxEnv, bin_dir_with, ok, until

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


# ---------------------------------------------------------------------------------------------
# The image's true owners under keep-id: fuse-overlayfs shifts the layers' ids
# (sandbox/rootless/fuse_overlay.py), and its daemon lives exactly as long as the container.

OWNERS = (
    "id -u; stat -c '%u:%g %a' /etc/shadow /root /usr/bin/passwd; "
    'grep -c "^$(id -un):x:$(id -u):" /etc/passwd; '
    # Nothing of the daemon is visible in the container but its mount; PID 1 is ours.
    "cat /proc/1/comm; cat /proc/[0-9]*/comm | grep -c fuse-overlayfs || true"
)


# What a run needs on PATH, for the tests that take fuse-overlayfs away or fake it.
_HELPERS = ("newuidmap", "newgidmap", "getsubids", "slirp4netns", "pasta")


def _daemons(env: SandboxEnv) -> list[int]:
    """Live fuse-overlayfs processes serving this sandbox home (zombies are gone already)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        mine = str(env.root).encode() in b" ".join(argv)
        if argv[0].endswith(b"fuse-overlayfs") and state != "Z" and mine:
            found.append(int(entry.name))
    return found


def _no_daemons(env: SandboxEnv) -> None:
    # The kernel ends the FUSE connection when the container's mount namespace goes; the
    # daemon then exits on its own, a moment after the container.
    until(lambda: not _daemons(env), "fuse-overlayfs to exit", timeout=10)


@pytest.mark.needs("fuse", "fuse-overlayfs")
def test_keep_id_shows_the_image_owners(
    sandbox_env: SandboxEnv, debian_image: str, tmp_path: Path
) -> None:
    uid, gid = os.getuid(), os.getgid()
    volume = tmp_path / "mine"
    volume.mkdir()
    (volume / "file").write_text("x")
    out = ok(
        sandbox_env.run(
            "run",
            "--rm",
            "--userns=keep-id",
            "-v",
            f"{volume}:/mine",
            debian_image,
            "sh",
            "-c",
            OWNERS + "; stat -c '%u:%g' /mine/file; echo new > /mine/new",
        )
    )
    lines = out.splitlines()
    assert lines[0] == str(uid)
    # The image's owners, as in a container with the default mapping (test_run.py).
    assert lines[1:4] == ["0:42 640", "0:0 700", "0:0 4755"], out
    assert lines[4] == "1", out  # the user's own passwd entry
    assert lines[5] == "sh" and lines[6] == "0", out
    assert lines[7] == f"{uid}:{gid}", out  # the user's files are the user's inside
    made = (volume / "new").stat()
    assert (made.st_uid, made.st_gid) == (uid, gid)
    _no_daemons(sandbox_env)


@pytest.mark.needs("fuse", "fuse-overlayfs")
def test_keep_id_files_made_in_the_root_are_the_users(
    sandbox_env: SandboxEnv, debian_image: str
) -> None:
    name = "kid-upper"
    try:
        ok(
            sandbox_env.run(
                "run",
                "--name",
                name,
                "--userns=keep-id",
                debian_image,
                "sh",
                "-c",
                "echo mine > /tmp/made; mkdir /var/tmp/dir; stat -c %u:%g /tmp/made /etc/shadow",
            )
        )
        cid = ok(sandbox_env.run("inspect", "--format", "{{.Id}}", name)).strip()
        upper = sandbox_env.data_home / "sandbox" / "containers" / cid / "upper"
        for path in (upper / "tmp" / "made", upper / "var" / "tmp" / "dir"):
            st = path.stat()
            assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid()), path
        # Started again: the same view, the file still there.
        again = ok(sandbox_env.run("start", "-a", name))
        assert again.splitlines() == [f"{os.getuid()}:{os.getgid()}", "0:42"], again
        # cp from the stopped container sees the root as it does.
        out = sandbox_env.root / "made"
        ok(sandbox_env.run("cp", f"{name}:/tmp/made", out))
        assert out.read_text() == "mine\n"
    finally:
        sandbox_env.run("rm", "-f", name)
    _no_daemons(sandbox_env)


@pytest.mark.needs("fuse", "fuse-overlayfs")
def test_keep_id_daemon_ends_with_the_container(
    sandbox_env: SandboxEnv, busybox_image: str
) -> None:
    # Detached, then rm -f: the daemon serves while it runs, and goes with it.
    ok(
        sandbox_env.run(
            "run", "-d", "--name", "kid-d", "--userns=keep-id", busybox_image, "sleep", "600"
        )
    )
    try:
        assert len(_daemons(sandbox_env)) == 1
        # Not in the container's PID namespace, nor in its cgroup.
        out = ok(sandbox_env.run("exec", "kid-d", "sh", "-c", "cat /proc/[0-9]*/comm"))
        assert "fuse-overlayfs" not in out
    finally:
        ok(sandbox_env.run("rm", "-f", "kid-d"))
    _no_daemons(sandbox_env)
    # A foreground run whose sandbox is SIGKILLed: PID 1 dies with it, and so does the daemon.
    process = subprocess.Popen(
        [
            *sandbox_env.argv_prefix(),
            "run",
            "--rm",
            "--userns=keep-id",
            busybox_image,
            "sleep",
            "600",
        ],
        env=sandbox_env.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        until(lambda: bool(_daemons(sandbox_env)), "the container's fuse-overlayfs")
        until(lambda: _sleeping(process.pid), "the container's command")
        process.kill()
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stderr is not None
        process.stderr.close()
    _no_daemons(sandbox_env)
    until(lambda: not _sleeping(process.pid), "the container to die with sandbox", timeout=10)


def _sleeping(parent: int) -> bool:
    """Whether a `sleep 600` that `sandbox` (pid parent) started is alive."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if argv == b"sleep\x00600\x00" and state != "Z":
                return True
    return False


@pytest.mark.needs("fuse", "fuse-overlayfs")
def test_keep_id_without_fuse_overlayfs_is_one_error(
    fresh_sandbox_env: SandboxEnv, busybox_tarball: Path, tmp_path: Path
) -> None:
    env = fresh_sandbox_env
    ok(env.run("image", "import", busybox_tarball, "kidbox"))
    # A PATH with the helpers a run needs, but no fuse-overlayfs.
    bin_dir = bin_dir_with(tmp_path, *_HELPERS)
    path = {"PATH": str(bin_dir)}
    done = env.run("run", "--rm", "--userns=keep-id", "kidbox", "true", env=path)
    assert done.returncode == 125, done.stderr
    assert "Traceback" not in done.stderr
    assert "fuse-overlayfs is not installed" in done.stderr
    assert "apt install fuse-overlayfs" in done.stderr
    # Nothing was created.
    assert ok(env.run("ps", "-a", "-q")).strip() == ""
    assert not list((env.data_home / "sandbox" / "containers").glob("*"))
    # The default mapping needs no fuse-overlayfs; doctor names what keep-id lacks.
    ok(env.run("run", "--rm", "kidbox", "true", env=path))
    doctor = env.run("doctor", env=path).stdout
    assert "keep-id" in doctor and "apt install fuse-overlayfs" in doctor, doctor


@pytest.mark.needs("fuse", "fuse-overlayfs")
@pytest.mark.parametrize("userns", ["auto", "keep-id"])
def test_fuse_overlay_root_when_forced(
    fresh_sandbox_env: SandboxEnv, debian_tarball: Path, userns: str
) -> None:
    """storage_driver: fuse-overlay (what `auto` picks when the kernel cannot mount overlay in
    a user namespace): fuse-overlayfs is the whole root, with the image's owners."""
    env = fresh_sandbox_env
    config = env.config_home / "sandbox" / "config.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("storage_driver: fuse-overlay\n")
    ok(env.run("image", "import", debian_tarball, "deb"))
    out = ok(
        env.run(
            "run",
            "--rm",
            f"--userns={userns}",
            "-u",
            "0",  # root of the container: it may write anywhere in the root
            "deb",
            "sh",
            "-c",
            "stat -c '%u:%g %a' /etc/shadow /usr/bin/passwd; grep -c fuse-overlayfs /proc/mounts;"
            "echo w > /w; cat /w; rm /usr/bin/passwd && "
            "test ! -e /usr/bin/passwd && echo removed",
        )
    )
    assert out.splitlines() == ["0:42 640", "0:0 4755", "1", "w", "removed"], out
    # cp into a container that never ran: through the same fuse-overlayfs root it will have.
    source = env.root / "in.txt"
    source.write_text("copied\n")
    ok(env.run("create", "--name", "fc", f"--userns={userns}", "deb", "cat", "/in.txt"))
    try:
        ok(env.run("cp", source, "fc:/in.txt"))
        assert ok(env.run("start", "-a", "fc")) == "copied\n"
    finally:
        env.run("rm", "-f", "fc")
    _no_daemons(env)


@pytest.mark.needs("fuse", "fuse-overlayfs")
def test_keep_id_vfs_copy_has_the_image_owners(
    fresh_sandbox_env: SandboxEnv, busybox_tarball: Path
) -> None:
    """storage_driver: vfs copies the layers through the shifted view once, with true owners."""
    env = fresh_sandbox_env
    config = env.config_home / "sandbox" / "config.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("storage_driver: vfs\n")
    ok(env.run("image", "import", busybox_tarball, "vbox"))
    script = "stat -c %u:%g /bin /etc/passwd; id -u; touch /tmp/t; stat -c %u /tmp/t"
    out = ok(env.run("run", "--rm", "--userns=keep-id", "vbox", "sh", "-c", script))
    assert out.splitlines() == ["0:0", f"{os.getuid()}:{os.getgid()}", *[str(os.getuid())] * 2]
    _no_daemons(env)


@pytest.mark.needs("fuse", "fuse-overlayfs")
def test_a_failing_fuse_overlayfs_is_one_error(
    fresh_sandbox_env: SandboxEnv, busybox_tarball: Path, tmp_path: Path
) -> None:
    env = fresh_sandbox_env
    ok(env.run("image", "import", busybox_tarball, "kidbox"))
    bin_dir = bin_dir_with(tmp_path, *_HELPERS, "sh")
    fake = bin_dir / "fuse-overlayfs"
    fake.write_text("#!/bin/sh\necho 'fuse: something is wrong' >&2\nexit 1\n")
    fake.chmod(0o755)
    done = env.run("run", "--rm", "--userns=keep-id", "kidbox", "true", env={"PATH": str(bin_dir)})
    assert done.returncode == 125, done.stderr
    assert "Traceback" not in done.stderr
    assert "fuse-overlayfs failed" in done.stderr and "something is wrong" in done.stderr
    assert ok(env.run("ps", "-a", "-q")).strip() == ""


@pytest.mark.needs("fuse", "fuse-overlayfs", "overlay_userns")
def test_commit_of_a_keep_id_container_keeps_the_owners(
    sandbox_env: SandboxEnv, busybox_image: str
) -> None:
    uid = os.getuid()
    script = f"echo a > /etc/by-root; echo b > /etc/mine; chown {uid} /etc/mine"
    try:
        ok(
            sandbox_env.run(
                "run",
                "--name",
                "kid-c",
                "--userns=keep-id",
                "-u",
                "0",
                busybox_image,
                "sh",
                "-c",
                script,
            )
        )
        ok(sandbox_env.run("commit", "kid-c", "localhost/kid-c:1"))
        check = "stat -c %u /etc/by-root /etc/mine /bin"
        for userns in ("auto", "keep-id"):
            out = ok(
                sandbox_env.run(
                    "run", "--rm", f"--userns={userns}", "localhost/kid-c:1", "sh", "-c", check
                )
            )
            assert out.split() == ["0", str(uid), "0"], (userns, out)
    finally:
        sandbox_env.run("rm", "-f", "kid-c")
        sandbox_env.run("rmi", "localhost/kid-c:1")


@pytest.mark.needs("fuse", "fuse-overlayfs")
def test_sandbox_killed_while_fuse_overlayfs_starts_leaves_no_daemon(
    fresh_sandbox_env: SandboxEnv, busybox_tarball: Path, tmp_path: Path
) -> None:
    env = fresh_sandbox_env
    ok(env.run("image", "import", busybox_tarball, "kidbox"))
    bin_dir = bin_dir_with(tmp_path, *_HELPERS, "sh", "touch", "sleep")
    started = tmp_path / "started"
    real = shutil.which("fuse-overlayfs")
    # The real daemon, exec'd once sandbox (and the intermediate with it) is dead.
    fake = bin_dir / "fuse-overlayfs"
    fake.write_text(f'#!/bin/sh\ntouch {started}\nsleep 1\nexec {real} "$@"\n')
    fake.chmod(0o755)
    process = subprocess.Popen(
        [*env.argv_prefix(), "run", "--rm", "--userns=keep-id", "kidbox", "sleep", "600"],
        env={**env.env, "PATH": str(bin_dir)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        until(started.exists, "fuse-overlayfs to be started", timeout=30)
        process.kill()
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    import time

    time.sleep(2)  # the real daemon has been exec'd by now (and found its mount gone)
    _no_daemons(env)
    assert not _sleeping(process.pid)
