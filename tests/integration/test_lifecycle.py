"""Detached containers and their lifecycle, as an unprivileged user: run -d, ps, exec, logs,
stop, kill, wait, start, restart, rm, and what is left on disk afterwards."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import SandboxEnv, ok, run_detached, until

Run = Callable[..., subprocess.CompletedProcess[str]]

pytestmark = pytest.mark.needs("userns", "subids", "newuidmap")


def _ps(run: Run, *args: str) -> list[dict[str, object]]:
    return list(json.loads(ok(run("ps", "--format", "json", *args))))


def _container_dir(env: SandboxEnv, container_id: str) -> Path:
    return env.data_home / "sandbox" / "containers" / container_id


def test_detached_httpd_ps_exec_logs_stop_rm(
    fresh_sandbox_env: SandboxEnv, busybox_tarball: Path
) -> None:
    run = fresh_sandbox_env.run
    ok(run("image", "import", busybox_tarball, "busybox"))
    container_id = run_detached(
        run,
        "web",
        "busybox",
        "sh",
        "-c",
        "echo to-stdout; echo to-stderr >&2; exec httpd -f -p 8080",
    )
    assert len(container_id) == 64
    listed = _ps(run)
    assert [c["Names"] for c in listed] == [["web"]]
    assert listed[0]["State"] == "running"
    pid = int(listed[0]["Pid"])  # type: ignore[call-overload]
    assert os.path.exists(f"/proc/{pid}")

    # exec joins the same PID namespace (httpd is PID 1 there) and the same hostname.
    out = ok(
        run(
            "exec", "web", "sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '; echo; hostname; echo $$"
        )
    )
    cmdline, hostname, own_pid = out.splitlines()
    assert cmdline.startswith("httpd -f -p 8080")
    assert hostname == container_id[:12]
    assert int(own_pid) > 1
    assert run("exec", "web", "no-such-command").returncode == 127
    assert run("exec", "web", "sh", "-c", "exit 3").returncode == 3
    # httpd answers inside the container's own network namespace.
    out = ok(run("exec", "web", "wget", "-q", "-O", "-", "http://127.0.0.1:8080/etc/hostname"))
    assert out.strip() == container_id[:12]

    until(lambda: "to-stderr" in run("logs", "web").stderr, "the log")
    logs = run("logs", "web")
    assert logs.stdout == "to-stdout\n" and logs.stderr == "to-stderr\n"
    stamped = run("logs", "-t", "--tail", "2", "web")
    assert stamped.stdout.endswith(" to-stdout\n") and stamped.stdout[:4].isdigit()
    assert stamped.stderr.endswith(" to-stderr\n")
    assert ok(run("logs", "--tail", "0", "web")) == ""

    # httpd as PID 1 ignores SIGTERM (no handler), so stop has to fall back to SIGKILL once
    # its timeout passes: exit 137 shows it did (no wall-clock assertion).
    ok(run("stop", "-t", "1", "web"))
    (web,) = _ps(run, "-a")
    assert web["State"] == "exited" and web["ExitCode"] == 137
    assert not os.path.exists(f"/proc/{pid}")

    cdir = _container_dir(fresh_sandbox_env, container_id)
    assert cdir.exists()
    ok(run("rm", "web"))
    assert not cdir.exists()
    assert _ps(run, "-a") == []
    layers = fresh_sandbox_env.data_home / "sandbox" / "storage" / "layers"
    ok(run("rmi", "busybox"))
    assert [p for p in layers.iterdir() if not p.name.startswith(".")] == []


def test_stop_with_sigterm_handler_and_wait(sandbox_env: SandboxEnv, busybox_image: str) -> None:
    sandbox = sandbox_env.run
    name = "trapper"
    run_detached(
        sandbox,
        name,
        busybox_image,
        "sh",
        "-c",
        "trap 'exit 7' TERM; while true; do sleep 0.1; done",
    )
    waiter = subprocess.Popen(
        [*sandbox_env.argv_prefix(), "wait", name],
        env=sandbox_env.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    ok(sandbox("stop", name))
    out, _ = waiter.communicate(timeout=30)
    assert out.strip() == "7"
    assert ok(sandbox("wait", name)).strip() == "7"
    ok(sandbox("rm", name))


def test_kill_signal_and_exit_code(sandbox: Run, busybox_image: str) -> None:
    run_detached(sandbox, "killme", "--init", busybox_image, "sleep", "100")
    ok(sandbox("kill", "-s", "USR1", "killme"))
    assert ok(sandbox("wait", "killme")).strip() == str(128 + signal.SIGUSR1)
    assert sandbox("kill", "killme").returncode == 125  # not running any more
    ok(sandbox("rm", "killme"))


def test_create_start_attach_restart(sandbox: Run, busybox_image: str) -> None:
    container_id = ok(
        sandbox(
            "create",
            "--name",
            "later",
            "--network",
            "none",
            busybox_image,
            "sh",
            "-c",
            "echo run >> /count; wc -l < /count",
        )
    ).strip()
    (created,) = [c for c in _ps(sandbox, "-a") if c["Id"] == container_id]
    assert created["State"] == "created"
    # start -a runs it in the foreground; the root filesystem persists between starts.
    done = sandbox("start", "-a", "later")
    assert done.returncode == 0 and done.stdout.strip() == "1"
    assert ok(sandbox("start", "-a", "later")).strip() == "2"
    ok(sandbox("start", "later"))
    assert ok(sandbox("wait", "later")).strip() == "0"
    assert ok(sandbox("logs", "later")).strip() == "3"
    ok(sandbox("rename", "later", "renamed"))
    assert sandbox("logs", "later").returncode == 125
    ok(sandbox("rm", "renamed"))


def test_restart_policy_on_failure(sandbox: Run, busybox_image: str) -> None:
    run_detached(
        sandbox,
        "flaky",
        "--restart",
        "on-failure:2",
        busybox_image,
        "sh",
        "-c",
        "echo attempt; exit 1",
    )
    until(lambda: ok(sandbox("logs", "flaky")).count("attempt") == 3, "three attempts")
    assert ok(sandbox("wait", "flaky")).strip() == "1"
    time.sleep(0.5)
    assert ok(sandbox("logs", "flaky")).count("attempt") == 3
    ok(sandbox("rm", "flaky"))
    assert sandbox("run", "--restart", "sometimes", busybox_image, "true").returncode == 125


def test_detached_rm_removes_itself(fresh_sandbox_env: SandboxEnv, busybox_tarball: Path) -> None:
    run = fresh_sandbox_env.run
    ok(run("image", "import", busybox_tarball, "bb"))
    container_id = ok(run("run", "-d", "--rm", "--network", "none", "bb", "true")).strip()
    until(
        lambda: not _container_dir(fresh_sandbox_env, container_id).exists(),
        "the container to remove itself",
    )
    assert _ps(run, "-a") == []


def test_killed_monitor_leaves_nothing_behind(sandbox_env: SandboxEnv, busybox_image: str) -> None:
    run = sandbox_env.run
    container_id = run_detached(run, "orphan", busybox_image, "sleep", "1000")
    record = json.loads((_container_dir(sandbox_env, container_id) / "container.json").read_text())
    monitor, pid = record["monitor_pid"], record["pid"]
    assert monitor > 0 and os.path.exists(f"/proc/{pid}")
    os.kill(monitor, signal.SIGKILL)
    # PID 1 dies with its monitor (PDEATHSIG), and ps shows the container as exited.
    until(lambda: not os.path.exists(f"/proc/{pid}"), "PID 1 to die with its monitor")
    (orphan,) = [c for c in _ps(run, "-a") if c["Id"] == container_id]
    assert orphan["State"] == "exited"
    ok(run("rm", "-f", "orphan"))
    assert not _container_dir(sandbox_env, container_id).exists()


def test_killed_rm_containers_are_removed_by_the_next_ps(
    sandbox_env: SandboxEnv, busybox_image: str
) -> None:
    """`run --rm` killed with SIGKILL (a CI job's timeout), or the monitor of a `run -d --rm`
    killed: nobody is left to remove the container, so the next `ps` does, as podman's
    conmon would through its exit command."""
    run = sandbox_env.run
    argv = [*sandbox_env.argv_prefix(), "run", "--rm", "--network", "none", "--name", "fg"]
    foreground = subprocess.Popen(
        [*argv, busybox_image, "sleep", "1000"],
        env=sandbox_env.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        until(lambda: any("fg" in c["Names"] for c in _ps(run)), "the --rm container to run")
        (fg,) = [c["Id"] for c in _ps(run) if "fg" in c["Names"]]
    finally:
        foreground.kill()
        foreground.wait()
    detached = run_detached(run, "bg", "--rm", busybox_image, "sleep", "1000")
    record = json.loads((_container_dir(sandbox_env, detached) / "container.json").read_text())
    os.kill(record["monitor_pid"], signal.SIGKILL)
    until(lambda: not os.path.exists(f"/proc/{record['pid']}"), "PID 1 to die with its monitor")
    assert not [c for c in _ps(run, "-a") if {"fg", "bg"} & set(c["Names"])]
    assert not _container_dir(sandbox_env, fg).exists()
    assert not _container_dir(sandbox_env, detached).exists()
    # A --rm container still running is left alone.
    run_detached(run, "live", "--rm", busybox_image, "sleep", "100")
    assert any("live" in c["Names"] for c in _ps(run, "-a"))
    ok(run("rm", "-f", "live"))


def test_exec_tty_user_workdir_env(sandbox: Run, busybox_image: str) -> None:
    run_detached(sandbox, "shell", "-e", "FROM_RUN=1", busybox_image, "sleep", "1000")
    out = ok(
        sandbox(
            "exec",
            "-u",
            "65534:65534",
            "-w",
            "/tmp",
            "-e",
            "EXTRA=2",
            "shell",
            "sh",
            "-c",
            'echo "$(id -u):$(id -g) $(pwd) $FROM_RUN $EXTRA"',
        )
    )
    assert out.strip() == "65534:65534 /tmp 1 2"
    assert ok(sandbox("exec", "-i", "shell", "cat", input="fed\n")) == "fed\n"
    out = ok(sandbox("exec", "-t", "shell", "tty"))
    assert out.strip().startswith("/dev/pts/")
    # The exec'd process is confined like the command: same status fields as PID 1's.
    pid1 = ok(
        sandbox(
            "exec", "shell", "sh", "-c", "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/1/status"
        )
    )
    own = ok(
        sandbox(
            "exec", "shell", "sh", "-c", "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status"
        )
    )
    assert own == pid1
    ok(sandbox("exec", "-d", "shell", "sh", "-c", "sleep 1; touch /detached"))
    until(
        lambda: sandbox("exec", "shell", "test", "-e", "/detached").returncode == 0,
        "the detached exec",
    )
    ok(sandbox("rm", "-f", "shell"))


def test_top_lists_the_containers_processes(sandbox: Run, busybox_image: str) -> None:
    run_detached(sandbox, "topped", "--init", busybox_image, "sleep", "1000")
    out = ok(sandbox("top", "topped"))
    rows = [line.split() for line in out.splitlines()[1:]]
    assert [row[0] for row in rows] == ["1", "2"]
    assert rows[1][5:] == ["sleep", "1000"]
    ok(sandbox("rm", "-f", "topped"))


def test_fifty_concurrent_runs(sandbox_env: SandboxEnv, busybox_image: str) -> None:
    def one(i: int) -> subprocess.CompletedProcess[str]:
        return sandbox_env.run(
            "run", "--rm", "--network", "none", busybox_image, "sh", "-c", f"echo {i}", timeout=600
        )

    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(one, range(50)))
    failures = [(r.returncode, r.stderr) for r in results if r.returncode != 0]
    assert failures == []
    assert sorted(int(r.stdout) for r in results) == list(range(50))
    containers = sandbox_env.data_home / "sandbox" / "containers"
    leftovers = [p.name for p in containers.iterdir() if not p.name.startswith(".")]
    listed = {c["Id"] for c in _ps(sandbox_env.run, "-a")}
    assert set(leftovers) == listed


def test_ps_never_crashes_while_containers_come_and_go(
    sandbox_env: SandboxEnv, busybox_image: str
) -> None:
    runs = [
        subprocess.Popen(
            [*sandbox_env.argv_prefix(), "run", "--rm", "--network", "none", busybox_image, "true"],
            env=sandbox_env.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for _ in range(10)
    ]
    try:
        while any(p.poll() is None for p in runs):
            done = sandbox_env.run("ps", "-a", "--format", "json")
            assert done.returncode == 0, done.stderr
            json.loads(done.stdout)
    finally:
        for p in runs:
            p.wait(timeout=120)
    assert all(p.returncode == 0 for p in runs)


def test_cp_both_ways_running_and_stopped(sandbox: Run, busybox_image: str, tmp_path: Path) -> None:
    run_detached(
        sandbox,
        "copier",
        busybox_image,
        "sh",
        "-c",
        "mkdir -p /data/sub && echo inside > /data/sub/f && chown 1000:1000 "
        "/data/sub/f && exec sleep 1000",
    )
    until(
        lambda: sandbox("exec", "copier", "test", "-e", "/data/sub/f").returncode == 0,
        "the file inside",
    )
    ok(sandbox("cp", "copier:/data", str(tmp_path)))
    copied = tmp_path / "data" / "sub" / "f"
    assert copied.read_text() == "inside\n"
    assert copied.stat().st_uid == os.getuid()
    host_file = tmp_path / "from-host"
    host_file.write_text("outside\n")
    ok(sandbox("cp", str(host_file), "copier:/data/sub/"))
    ok(sandbox("cp", str(host_file), "copier:/data/renamed"))
    out = ok(
        sandbox(
            "exec",
            "copier",
            "sh",
            "-c",
            "cat /data/sub/from-host /data/renamed; stat -c %u:%g /data/renamed",
        )
    )
    assert out.splitlines() == ["outside", "outside", "0:0"]
    ok(sandbox("stop", "-t", "0", "copier"))
    # Stopped: the root is mounted privately for the copy.
    ok(sandbox("cp", "copier:/data/renamed", str(tmp_path / "back")))
    assert (tmp_path / "back").read_text() == "outside\n"
    assert sandbox("cp", "copier:/no/such", str(tmp_path)).returncode == 125
    ok(sandbox("rm", "copier"))


def test_cp_never_writes_through_a_symlink_out_of_the_root(
    sandbox: Run, busybox_image: str, tmp_path: Path
) -> None:
    """CVE-2018-15664 class: a container's symlink must not lead `cp` onto the host."""
    target = tmp_path / "host-target"
    target.mkdir()
    run_detached(
        sandbox,
        "symlinker",
        busybox_image,
        "sh",
        "-c",
        f"ln -s {target} /abs && ln -s ../../../../../../{target} /rel && exec sleep 1000",
    )
    until(
        lambda: sandbox("exec", "symlinker", "test", "-L", "/rel").returncode == 0, "the symlinks"
    )
    payload = tmp_path / "payload"
    payload.write_text("evil\n")
    for link in ("abs", "rel"):
        done = sandbox("cp", str(payload), f"symlinker:/{link}/x")
        assert done.returncode == 125, done.stderr
        done = sandbox("cp", str(payload), f"symlinker:/{link}")
        # Copying onto the symlink's own name replaces nothing on the host either way.
    assert list(target.iterdir()) == []
    # Reading through them reads the container's paths, never the host's.
    (target / "secret").write_text("host secret\n")
    assert sandbox("cp", "symlinker:/abs/secret", str(tmp_path / "stolen")).returncode == 125
    assert not (tmp_path / "stolen").exists()
    ok(sandbox("rm", "-f", "symlinker"))


def test_diff_lists_added_changed_deleted(sandbox: Run, busybox_image: str) -> None:
    ok(
        sandbox(
            "run",
            "--name",
            "differ",
            "--network",
            "none",
            busybox_image,
            "sh",
            "-c",
            "echo new > /added; echo x >> /etc/passwd; rm /bin/ls",
        )
    )
    out = ok(sandbox("diff", "differ"))
    lines = set(out.splitlines())
    assert {"A /added", "C /etc/passwd", "D /bin/ls"} <= lines
    assert json.loads(ok(sandbox("diff", "--format", "json", "differ")))
    ok(sandbox("rm", "differ"))


def test_ps_filters_and_templates(sandbox: Run, busybox_image: str) -> None:
    ok(sandbox("run", "--name", "filtered-a", "--network", "none", busybox_image, "true"))
    assert (
        sandbox(
            "run", "--name", "filtered-b", "--network", "none", busybox_image, "false"
        ).returncode
        == 1
    )
    out = ok(
        sandbox(
            "ps",
            "-a",
            "--filter",
            "name=^filtered-",
            "--format",
            "{{.Names}} {{.State}} {{.ExitCode}}",
        )
    )
    assert sorted(out.splitlines()) == ["filtered-a exited 0", "filtered-b exited 1"]
    out = ok(sandbox("ps", "-a", "--filter", "name=filtered-b", "--format", "{{.Status}}"))
    assert re.fullmatch(r"Exited \(1\) (Less than a second|1 second|\d+ seconds) ago\n", out)
    out = ok(sandbox("ps", "-a", "--filter", "name=filtered-b", "--format", "table {{.Names}}"))
    assert out.split() == ["NAMES", "filtered-b"]
    assert (
        ok(sandbox("ps", "--filter", "status=running", "--filter", "name=filtered")).splitlines()[
            1:
        ]
        == []
    )
    bad = sandbox("ps", "--format", "{{.Nope}}", "-a")
    assert bad.returncode == 125 and "Nope" in bad.stderr
    assert sandbox("ps", "--filter", "colour=red").returncode == 125
    ok(sandbox("rm", "filtered-a", "filtered-b"))


def test_attach_relays_both_ways_and_exits_with_the_container(
    sandbox_env: SandboxEnv, busybox_image: str
) -> None:
    run = sandbox_env.run
    run_detached(
        run,
        "attached",
        "-i",
        busybox_image,
        "sh",
        "-c",
        "read line; echo got=$line; echo err=$line >&2; exit 5",
    )
    attacher = subprocess.Popen(
        [*sandbox_env.argv_prefix(), "attach", "attached"],
        env=sandbox_env.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1)  # let it connect before the input arrives
    out, err = attacher.communicate("hello\n", timeout=60)
    assert attacher.returncode == 5, err
    assert out == "got=hello\n" and err == "err=hello\n"
    ok(run("rm", "attached"))
    assert run("attach", "attached").returncode == 125


def test_commit_makes_an_image_of_the_changes(sandbox: Run, busybox_image: str) -> None:
    ok(
        sandbox(
            "run",
            "--name",
            "to-commit",
            "--network",
            "none",
            "-w",
            "/srv",
            "-e",
            "MODE=x",
            busybox_image,
            "sh",
            "-c",
            "mkdir -p /srv/app /etc/empty && echo built > /srv/app/file && rm /bin/ls && "
            "touch /etc/empty/a && rm -r /etc/empty && mkdir /etc/empty",
        )
    )
    image_id = ok(sandbox("commit", "-m", "test", "to-commit", "committed:v1")).strip()
    assert len(image_id) == 64
    out = ok(
        sandbox(
            "run",
            "--rm",
            "--network",
            "none",
            "committed:v1",
            "sh",
            "-c",
            "cat app/file; pwd; echo $MODE; ls /bin/ls 2>&1; ls -A /etc/empty | wc -l",
        )
    )
    lines = out.splitlines()
    assert lines[:3] == ["built", "/srv", "x"]
    assert "No such file" in lines[3]
    assert lines[4] == "0"
    # The command recorded in the image is the container's: rerun, its `rm /bin/ls` fails.
    rerun = sandbox("run", "--rm", "--network", "none", "committed:v1")
    assert rerun.returncode == 1 and "/bin/ls" in rerun.stderr
    ok(sandbox("rm", "to-commit"))
    ok(sandbox("rmi", "committed:v1"))


def test_exec_into_a_container_with_init(sandbox: Run, busybox_image: str) -> None:
    run_detached(sandbox, "with-init", "--init", busybox_image, "sleep", "1000")
    out = ok(sandbox("exec", "with-init", "sh", "-c", "cat /proc/2/cmdline | tr '\\0' ' '"))
    assert out.strip() == "sleep 1000"
    ok(sandbox("rm", "-f", "with-init"))


def test_restart_prune_and_pause_without_a_freezer(
    fresh_sandbox_env: SandboxEnv, busybox_tarball: Path
) -> None:
    run = fresh_sandbox_env.run
    ok(run("image", "import", busybox_tarball, "bb"))
    run_detached(run, "again", "bb", "sh", "-c", "echo started; exec sleep 1000")
    (before,) = _ps(run)
    ok(run("restart", "-t", "0", "again"))
    (after,) = _ps(run)
    assert after["State"] == "running" and after["Pid"] != before["Pid"]
    until(lambda: ok(run("logs", "again")).count("started") == 2, "the second start")
    # No cgroup v2 freezer on this host: a clear refusal, and the container keeps running.
    paused = run("pause", "again")
    assert paused.returncode == 125 and "freezer" in paused.stderr
    assert _ps(run)[0]["State"] == "running"
    ok(run("run", "--network", "none", "--name", "done-1", "bb", "true"))
    ok(run("create", "--network", "none", "--name", "never-started", "bb", "true"))
    pruned = ok(run("container", "prune")).split()
    assert len(pruned) == 2
    assert [c["Names"] for c in _ps(run, "-a")] == [["again"]]
    ok(run("rm", "-f", "again"))


def test_a_container_whose_network_others_join_is_removed_only_with_them(
    sandbox: Run, busybox_image: str
) -> None:
    ok(sandbox("run", "-d", "--name", "ns-owner", "--network", "none", busybox_image,
                "sleep", "60"))  # fmt: skip
    ok(sandbox("create", "--name", "ns-joiner", "--network", "container:ns-owner",
                busybox_image, "true"))  # fmt: skip
    refused = sandbox("rm", "-f", "ns-owner")
    assert refused.returncode == 125 and "Traceback" not in refused.stderr
    assert "ns-joiner" in refused.stderr and "rm --depend ns-owner" in refused.stderr
    names = ok(sandbox("ps", "-a", "--format", "{{.Names}}")).split()
    assert {"ns-owner", "ns-joiner"} <= set(names)
    ok(sandbox("rm", "-f", "--depend", "ns-owner"))
    names = ok(sandbox("ps", "-a", "--format", "{{.Names}}")).split()
    assert "ns-owner" not in names and "ns-joiner" not in names


@pytest.mark.needs("slirp4netns", "tun", "nftables")
def test_prune_keeps_a_stopped_container_whose_network_a_running_one_joins(
    sandbox: Run, busybox_image: str
) -> None:
    ok(sandbox("network", "create", "prunenet"))
    try:
        ok(sandbox("run", "-d", "--name", "pr-owner", "--network", "prunenet", busybox_image,
                    "sleep", "60"))  # fmt: skip
        ok(sandbox("run", "-d", "--name", "pr-joiner", "--network", "container:pr-owner",
                    busybox_image, "sleep", "60"))  # fmt: skip
        ok(sandbox("stop", "-t", "0", "pr-owner"))
        ok(sandbox("container", "prune"))
        names = ok(sandbox("ps", "-a", "--format", "{{.Names}}")).split()
        assert {"pr-owner", "pr-joiner"} <= set(names)
    finally:
        sandbox("network", "rm", "-f", "prunenet")
    names = ok(sandbox("ps", "-a", "--format", "{{.Names}}")).split()
    assert "pr-owner" not in names and "pr-joiner" not in names  # network rm -f took both
