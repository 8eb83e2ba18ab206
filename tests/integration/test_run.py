"""`sandbox run` end to end, as an unprivileged user: what a process inside observes."""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sandbox.rootless.idmap import SUBUID, read_subids
from tests.helpers import SandboxEnv, ok, run_detached

Run = Callable[..., subprocess.CompletedProcess[str]]

pytestmark = pytest.mark.needs("userns", "subids", "newuidmap")


def test_uid_map_maps_root_to_user_and_the_subordinate_range(
    sandbox: Run, busybox_image: str
) -> None:
    out = ok(
        sandbox("run", "--rm", busybox_image, "cat", "/proc/self/uid_map", "/proc/self/gid_map")
    )
    rows = [line.split() for line in out.splitlines()]
    name = pwd.getpwuid(os.getuid()).pw_name
    (start, count), *_ = read_subids(SUBUID, name, os.getuid())
    assert rows[0] == ["0", str(os.getuid()), "1"]
    assert rows[1] == ["1", str(start), str(count)]
    assert count >= 65536
    assert rows[2][:3] == ["0", str(os.getgid()), "1"]


def test_command_is_pid_1_and_hostname_is_the_containers(sandbox: Run, busybox_image: str) -> None:
    out = ok(
        sandbox("run", "--rm", busybox_image, "sh", "-c", "echo $$; hostname; cat /etc/hostname")
    )
    pid, hostname, etc_hostname = out.split()
    assert pid == "1"
    assert hostname != os.uname().nodename
    assert hostname == etc_hostname and len(hostname) == 12
    out = ok(sandbox("run", "--rm", "--hostname", "box.example", busybox_image, "hostname"))
    assert out.strip() == "box.example"


def test_every_namespace_differs_from_the_callers(sandbox: Run, busybox_image: str) -> None:
    names = sorted(os.listdir("/proc/self/ns"))
    script = "; ".join(f"readlink /proc/self/ns/{n}" for n in names)
    out = ok(sandbox("run", "--rm", busybox_image, "sh", "-c", script))
    inside = out.split()
    outside = [os.readlink(f"/proc/self/ns/{n}") for n in names]
    assert len(inside) == len(outside)
    for name, a, b in zip(names, inside, outside, strict=True):
        assert a != b, f"namespace {name} is shared with the caller: {a}"


def test_loopback_is_up_and_nothing_else(sandbox: Run, busybox_image: str) -> None:
    out = ok(
        sandbox(
            "run",
            "--rm",
            "--network",
            "none",
            # busybox's ping needs a raw socket, which podman's default set leaves out.
            "--cap-add",
            "NET_RAW",
            busybox_image,
            "sh",
            "-c",
            "ls /sys/class/net; ping -c1 -W2 127.0.0.1 >/dev/null && echo pong",
        )
    )
    assert out.split() == ["lo", "pong"]


def test_exit_status_is_the_commands(sandbox: Run, busybox_image: str) -> None:
    assert sandbox("run", "--rm", busybox_image, "sh", "-c", "exit 42").returncode == 42


def test_missing_command_exits_127_and_not_executable_126(sandbox: Run, busybox_image: str) -> None:
    missing = sandbox("run", "--rm", busybox_image, "no-such-command")
    assert missing.returncode == 127
    assert "no-such-command" in missing.stderr and "Traceback" not in missing.stderr
    not_exec = sandbox("run", "--rm", busybox_image, "/etc/passwd")
    assert not_exec.returncode == 126
    assert sandbox("run", "--rm", busybox_image, "/no/such/file").returncode == 127


def test_killed_by_signal_exits_128_plus_n(sandbox: Run, busybox_image: str) -> None:
    # PID 1 of a PID namespace ignores its own signals; under --init the command is PID 2.
    done = sandbox("run", "--rm", "--init", busybox_image, "sh", "-c", "kill -USR1 $$")
    assert done.returncode == 128 + signal.SIGUSR1


def test_sigterm_to_sandbox_reaches_the_command_through_init(
    sandbox_env: SandboxEnv, busybox_image: str
) -> None:
    process = subprocess.Popen(
        [
            *sandbox_env.argv_prefix(),
            "run",
            "--rm",
            "--init",
            busybox_image,
            "sh",
            "-c",
            "echo started; exec sleep 100",
        ],
        env=sandbox_env.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "started"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 143
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_stdout_and_stderr_stay_separate(sandbox: Run, busybox_image: str) -> None:
    done = sandbox("run", "--rm", busybox_image, "sh", "-c", "echo out; echo err >&2")
    assert (done.stdout, done.stderr) == ("out\n", "err\n")


def test_stdin_reaches_the_command_only_with_i(sandbox: Run, busybox_image: str) -> None:
    assert ok(sandbox("run", "--rm", "-i", busybox_image, "cat", input="piped\n")) == "piped\n"
    assert ok(sandbox("run", "--rm", busybox_image, "cat", input="piped\n")) == ""


def test_volume_file_belongs_to_the_user_on_the_host(
    sandbox: Run, busybox_image: str, tmp_path: Path
) -> None:
    volume = tmp_path / "vol"
    volume.mkdir()
    out = ok(
        sandbox(
            "run",
            "--rm",
            "-v",
            f"{volume}:/data",
            busybox_image,
            "sh",
            "-c",
            "echo hello > /data/f; stat -c %u:%g /data/f",
        )
    )
    assert out.strip() == "0:0"
    st = (volume / "f").stat()
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
    assert (volume / "f").read_text() == "hello\n"


def test_read_only_volume_and_root(sandbox: Run, busybox_image: str, tmp_path: Path) -> None:
    done = sandbox("run", "--rm", "-v", f"{tmp_path}:/data:ro", busybox_image, "touch", "/data/x")
    assert done.returncode != 0 and "Read-only file system" in done.stderr
    assert not (tmp_path / "x").exists()
    done = sandbox(
        "run",
        "--rm",
        "--read-only",
        busybox_image,
        "sh",
        "-c",
        "touch /tmp/ok && echo tmp-writable; touch /etc/x",
    )
    assert done.stdout == "tmp-writable\n"
    assert done.returncode != 0 and "Read-only file system" in done.stderr


def test_tmpfs_env_workdir_user_and_entrypoint(
    sandbox: Run, busybox_image: str, tmp_path: Path
) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("# comment\nFROM_FILE=1\nBOTH=file\n")
    out = ok(
        sandbox(
            "run",
            "--rm",
            "--tmpfs",
            "/scratch",
            "-e",
            "A=b c",
            "-e",
            "BOTH=cli",
            "--env-file",
            env_file,
            "-w",
            "/scratch",
            "-u",
            "65534:65534",
            busybox_image,
            "sh",
            "-c",
            'echo "$A|$FROM_FILE|$BOTH|$(pwd)|$(id -u):$(id -g)"; '
            "grep ' /scratch ' /proc/self/mountinfo | cut -d' ' -f9",
        )
    )
    assert out.splitlines() == ["b c|1|cli|/scratch|65534:65534", "tmpfs"]
    out = ok(sandbox("run", "--rm", "--entrypoint", "echo", busybox_image, "via", "entry"))
    assert out == "via entry\n"


def test_user_by_name_from_the_images_passwd(sandbox: Run, busybox_image: str) -> None:
    out = ok(sandbox("run", "--rm", "-u", "nobody", busybox_image, "sh", "-c", "id -u; echo $HOME"))
    assert out.split()[0] == "65534"
    done = sandbox("run", "--rm", "-u", "no-such-user", busybox_image, "true")
    assert done.returncode == 125 and "no-such-user" in done.stderr


def test_umask_is_the_containers_not_the_callers(sandbox: Run, busybox_image: str) -> None:
    script = "umask; touch /f; mkdir /d; stat -c %a /f /d"
    caller = os.umask(0o077)  # the caller's mask must not leak into the container
    try:
        out = ok(sandbox("run", "--rm", busybox_image, "sh", "-c", script))
    finally:
        os.umask(caller)
    assert out.split() == ["0022", "644", "755"]
    out = ok(sandbox("run", "--rm", "--umask", "027", busybox_image, "sh", "-c", script))
    assert out.split() == ["0027", "640", "750"]
    # exec'd processes take the container's mask too.
    name = "umask-exec"
    run_detached(sandbox, name, "--umask", "0077", busybox_image, "sleep", "60")
    try:
        assert ok(sandbox("exec", name, "sh", "-c", "umask")).strip() == "0077"
    finally:
        sandbox("rm", "-f", name)
    for bad in ("8", "01777", "abc"):
        done = sandbox("run", "--rm", "--umask", bad, busybox_image, "true")
        assert done.returncode == 125 and "--umask" in done.stderr, done.stderr


def test_dev_proc_and_sys_are_set_up(sandbox: Run, busybox_image: str) -> None:
    out = ok(
        sandbox(
            "run",
            "--rm",
            busybox_image,
            "sh",
            "-c",
            'ls /dev; awk \'{for (i = 7; i <= NF; i++) if ($i == "-") '
            "{print $5, $(i + 1); break}}' /proc/self/mountinfo; "
            "echo x > /dev/null && head -c 4 /dev/zero | wc -c",
        )
    )
    lines = out.splitlines()
    for device in ("null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "mqueue"):
        assert device in lines
    mounts = dict(line.split() for line in lines if line.startswith("/") and " " in line)
    assert mounts["/proc"] == "proc"
    assert mounts["/dev"] == "tmpfs"
    assert mounts["/dev/pts"] == "devpts"
    assert mounts["/dev/shm"] == "tmpfs"
    assert mounts["/dev/mqueue"] == "mqueue"
    assert mounts["/sys"] == "sysfs"
    assert lines[-1] == "4"


def test_init_reaps_and_the_command_is_its_child(sandbox: Run, busybox_image: str) -> None:
    out = ok(sandbox("run", "--rm", "--init", busybox_image, "sh", "-c", "echo $PPID $$"))
    assert out.split() == ["1", "2"]


def test_tty_matches_the_callers_size_and_follows_sigwinch(
    sandbox_env: SandboxEnv, busybox_image: str
) -> None:
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
    process = subprocess.Popen(
        [
            *sandbox_env.argv_prefix(),
            "run",
            "--rm",
            "-it",
            busybox_image,
            "sh",
            "-c",
            "tty; stty size; read line; stty size; echo got=$line",
        ],
        env=sandbox_env.env,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    output = b""

    def read_until(token: bytes) -> None:
        nonlocal output
        deadline = time.monotonic() + 30
        while token not in output:
            assert time.monotonic() < deadline, output
            try:
                output += os.read(master, 4096)
            except OSError:
                break

    try:
        read_until(b"33 101")
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        process.send_signal(signal.SIGWINCH)
        time.sleep(0.5)
        os.write(master, b"hello\r")
        read_until(b"got=hello")
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        os.close(master)
    text = output.decode()
    assert "/dev/pts/0" in text
    assert "40 120" in text


def test_run_without_rm_keeps_the_container_until_rm(
    sandbox_env: SandboxEnv, busybox_image: str
) -> None:
    run = sandbox_env.run
    ok(run("run", "--name", "keeper", busybox_image, "sh", "-c", "echo data > /kept"))
    listed = json.loads(ok(run("ps", "-a", "--format", "json")))
    keeper = next(c for c in listed if c["Names"] == ["keeper"])
    assert keeper["State"] == "exited" and keeper["ExitCode"] == 0
    container_dir = sandbox_env.data_home / "sandbox" / "containers" / keeper["Id"]
    assert container_dir.is_dir()
    assert "keeper" in ok(run("ps", "-a"))
    assert "keeper" not in ok(run("ps"))
    duplicate = run("run", "--name", "keeper", busybox_image, "true")
    assert duplicate.returncode == 125 and "already in use" in duplicate.stderr
    ok(run("rm", "keeper"))
    assert not container_dir.exists()
    assert all(
        c["Names"] != ["keeper"] for c in json.loads(ok(run("ps", "-a", "--format", "json")))
    )


def test_rm_leaves_nothing_behind(sandbox_env: SandboxEnv, busybox_image: str) -> None:
    containers = sandbox_env.data_home / "sandbox" / "containers"
    before = {p.name for p in containers.iterdir()} if containers.exists() else set()
    ok(
        sandbox_env.run(
            "run",
            "--rm",
            busybox_image,
            "sh",
            "-c",
            "mkdir -p /a/b; touch /a/b/c; chown 1000:1000 /a/b/c",
        )
    )
    # A directory of a subordinate id, with a file in it and no write bit for its group and
    # others: only the container's user namespace can empty it.
    ok(
        sandbox_env.run(
            "run",
            "--rm",
            busybox_image,
            "sh",
            "-c",
            "mkdir -m 0755 /owned && touch /owned/f && chown -R 1000:1000 /owned",
        )
    )
    after = {p.name for p in containers.iterdir()}
    assert after - before <= {".lock"}


def test_changes_stay_in_the_container_not_the_image(sandbox: Run, busybox_image: str) -> None:
    ok(sandbox("run", "--rm", busybox_image, "sh", "-c", "rm /bin/ls; echo x > /etc/passwd"))
    out = ok(sandbox("run", "--rm", busybox_image, "sh", "-c", "ls /bin/ls; head -1 /etc/passwd"))
    assert out.splitlines()[0] == "/bin/ls"
    assert out.splitlines()[1].startswith("root:")


def test_rootfs_directory(sandbox: Run, tmp_path: Path, busybox_tarball: Path) -> None:
    root = tmp_path / "rootfs"
    root.mkdir()
    subprocess.run(["tar", "-xf", busybox_tarball, "-C", root, "--no-same-owner"], check=True)
    out = ok(sandbox("run", "--rm", "--rootfs", root, "sh", "-c", "echo $$; id -u"))
    assert out.split() == ["1", "0"]


def test_bad_input_is_one_line_and_exit_125(
    sandbox: Run, busybox_image: str, tmp_path: Path
) -> None:
    cases = [
        ("run", "--rm", "no-such-image", "true"),
        ("run", "--rm", "-v", f"{tmp_path}/missing:/x", busybox_image, "true"),
        ("run", "--rm", "-v", "./no-such-dir:/x", busybox_image, "true"),
        ("run", "--rm", "-v", "bad/name:/x", busybox_image, "true"),
        ("run", "--rm", "-w", "relative", busybox_image, "true"),
        ("run", "--rm", "--name", "bad name!", busybox_image, "true"),
        ("run", "--rm", "--userns", "bogus", busybox_image, "true"),
        ("run", "--rm", "--no-such-option", busybox_image, "true"),
        ("run", "--rm", "--rootfs", tmp_path / "nope", "true"),
        ("rm", "no-such-container"),
    ]
    for args in cases:
        done = sandbox(*args)
        assert done.returncode == 125, (args, done.stderr)
        assert "Traceback" not in done.stderr, (args, done.stderr)
        assert done.stderr.startswith(("Error:", "Usage:")), (args, done.stderr)


def test_failed_run_leaves_nothing_behind(sandbox_env: SandboxEnv, busybox_image: str) -> None:
    containers = sandbox_env.data_home / "sandbox" / "containers"
    before = set(containers.iterdir()) if containers.exists() else set()
    assert (
        sandbox_env.run("run", "--rm", "-v", "/no/such:/x", busybox_image, "true").returncode == 125
    )
    assert sandbox_env.run("run", "--rm", busybox_image, "no-such-cmd").returncode == 127
    after = set(containers.iterdir()) if containers.exists() else set()
    assert {p.name for p in after - before} <= {".lock"}


def test_debian_runs_and_keeps_file_owners(sandbox: Run, debian_image: str) -> None:
    out = ok(
        sandbox(
            "run",
            "--rm",
            debian_image,
            "sh",
            "-c",
            "cat /etc/debian_version; ls -ln /etc/shadow; id -un",
        )
    )
    version, shadow, user = out.splitlines()
    assert version.split(".")[0] == "12"
    fields = shadow.split()
    assert (fields[2], fields[3]) == ("0", "42"), shadow
    assert user == "root"
    out = ok(
        sandbox(
            "run",
            "--rm",
            "-u",
            "nobody",
            debian_image,
            "sh",
            "-c",
            "id -un; cat /etc/shadow 2>&1 || true",
        )
    )
    assert out.splitlines()[0] == "nobody"
    assert "Permission denied" in out
