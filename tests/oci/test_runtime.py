"""Runtime-spec conformance of sandbox-runtime, driven directly with bundles the tests write:
the create/start/state/kill/delete transitions, and each spec field observed from inside."""

from __future__ import annotations

import array
import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.oci.runtime_support import RUNTIME, Runtime, config_of, env, make_bundle, write_config

pytestmark = pytest.mark.needs("unprivileged", "userns", "newuidmap", "busybox")


@pytest.fixture
def rt(tmp_path: Path) -> Runtime:
    return Runtime(tmp_path / "state")


def _observe(rt: Runtime, bundle: Path, script: str, cid: str, **changes: Any) -> str:
    config = config_of(bundle)
    config["process"]["args"] = ["sh", "-c", script]
    for path, value in changes.items():
        section, _, key = path.partition("__")
        if key:
            config.setdefault(section, {})[key] = value
        else:
            config[section] = value
    write_config(bundle, config)
    return rt.run_to_end(bundle, cid)


def test_lifecycle_created_running_stopped_and_wrong_states(
    rt: Runtime, tmp_path: Path, busybox_tarball: Path
) -> None:
    bundle = make_bundle(tmp_path / "b", busybox_tarball, args=["sleep", "300"])
    pid_file = tmp_path / "pid"
    assert rt("state", "c1").returncode != 0  # no such container
    with open(tmp_path / "c1.log", "w") as log:
        done = rt("create", "--bundle", bundle, "--pid-file", pid_file, "c1", stdout=log)
    assert done.returncode == 0, (tmp_path / "c1.log").read_text()
    state = rt.state("c1")
    assert state["status"] == "created"
    assert state["id"] == "c1" and state["bundle"] == str(bundle)
    assert state["pid"] == int(pid_file.read_text()) > 0
    assert state["ociVersion"].startswith("1.")
    # The process has not run yet: PID 1 is still our interpreter, not sleep.
    assert b"sleep" not in Path(f"/proc/{state['pid']}/cmdline").read_bytes()
    again = rt("create", "--bundle", bundle, "c1")
    assert again.returncode != 0 and "already exists" in again.stderr
    assert rt("start", "c1").returncode == 0
    assert rt.state("c1")["status"] == "running"
    time.sleep(0.1)
    assert Path(f"/proc/{state['pid']}/cmdline").read_bytes().startswith(b"sleep")
    second = rt("start", "c1")
    assert second.returncode != 0 and "running" in second.stderr
    refused = rt("delete", "c1")
    assert refused.returncode != 0 and "running" in refused.stderr
    assert rt("kill", "c1", "KILL").returncode == 0
    rt.wait_status("c1", "stopped")
    for verb in ("start", "kill"):
        late = rt(verb, "c1")
        assert late.returncode != 0 and "stopped" in late.stderr, verb
    assert rt("delete", "c1").returncode == 0
    assert rt("state", "c1").returncode != 0
    assert rt("list", "--format", "json").stdout.strip() == "[]"


def test_kill_all_ps_and_delete_force_of_created(
    rt: Runtime, tmp_path: Path, busybox_tarball: Path
) -> None:
    bundle = make_bundle(
        tmp_path / "b", busybox_tarball, args=["sh", "-c", "sleep 300 & sleep 301 & wait"]
    )
    with open(tmp_path / "log", "w") as log:
        assert rt("create", "--bundle", bundle, "c2", stdout=log).returncode == 0
    assert rt("start", "c2").returncode == 0
    deadline = time.monotonic() + 10
    while len(json.loads(rt("ps", "--format", "json", "c2").stdout)) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert rt("kill", "--all", "c2", "9").returncode == 0
    rt.wait_status("c2", "stopped")
    assert rt("delete", "c2").returncode == 0
    # A created container is removed by delete --force (podman's cleanup).
    with open(tmp_path / "log", "w") as log:
        assert rt("create", "--bundle", bundle, "c3", stdout=log).returncode == 0
    pid = rt.state("c3")["pid"]
    assert rt("delete", "--force", "c3").returncode == 0
    assert rt("state", "c3").returncode != 0
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_exec_and_run(rt: Runtime, tmp_path: Path, busybox_tarball: Path) -> None:
    bundle = make_bundle(tmp_path / "b", busybox_tarball, args=["sleep", "300"])
    with open(tmp_path / "log", "w") as log:
        assert rt("create", "--bundle", bundle, "c4", stdout=log).returncode == 0
    assert rt("exec", "c4", "true").returncode != 0  # not running yet
    assert rt("start", "c4").returncode == 0
    process = tmp_path / "process.json"
    process.write_text(
        json.dumps(
            {
                "args": ["sh", "-c", "echo $X; cat /proc/1/cmdline; exit 7"],
                "cwd": "/",
                "env": ["PATH=/bin", "X=from-process-json"],
                "user": {"uid": 0, "gid": 0},
            }
        )
    )
    done = rt("exec", "--process", process, "c4")
    assert done.returncode == 7, done.stderr
    assert done.stdout.splitlines()[0] == "from-process-json"
    assert "sleep" in done.stdout
    pid_file = tmp_path / "exec.pid"
    detached = rt("exec", "--detach", "--pid-file", pid_file, "c4", "sleep", "299")
    assert detached.returncode == 0, detached.stderr
    assert int(pid_file.read_text()) in json.loads(rt("ps", "--format", "json", "c4").stdout)
    assert rt("delete", "--force", "c4").returncode == 0
    # run: create + start + wait, with the process's exit status.
    config = config_of(bundle)
    config["process"]["args"] = ["sh", "-c", "exit 5"]
    write_config(bundle, config)
    assert rt("run", "--bundle", bundle, "c5").returncode == 5
    assert rt("state", "c5").returncode != 0


def test_spec_fields_observed_inside(rt: Runtime, tmp_path: Path, busybox_tarball: Path) -> None:
    from sandbox.oci import spec as oci
    from sandbox.rootless import seccomp

    bundle = make_bundle(tmp_path / "b", busybox_tarball)
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "file").write_text("host-data\n")
    config = config_of(bundle)
    uid = os.getuid()
    ranges = [(s, n) for s, n in _subids()]
    subordinate = {"containerID": 1, "hostID": ranges[0][0], "size": ranges[0][1]}
    config["linux"]["uidMappings"] = [{"containerID": 0, "hostID": uid, "size": 1}, subordinate]
    config["linux"]["gidMappings"] = [
        {"containerID": 0, "hostID": os.getgid(), "size": 1},
        subordinate,
    ]
    config["mounts"] += [
        {
            "destination": "/mnt/t",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "size=1m", "mode=700"],
        },
        {
            "destination": "/mnt/ro",
            "type": "bind",
            "source": str(shared),
            "options": ["rbind", "ro"],
        },
    ]
    config["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "hard": 64, "soft": 64}]
    config["process"]["capabilities"] = {
        k: ["CAP_KILL", "CAP_NET_BIND_SERVICE"] for k in ("bounding", "effective", "permitted")
    }
    config["process"]["noNewPrivileges"] = True
    config["process"]["oomScoreAdj"] = 500
    config["process"]["user"]["umask"] = 0o027
    config["linux"]["sysctl"] = {"net.ipv4.ping_group_range": "0 2000"}
    config["linux"]["maskedPaths"] = ["/proc/timer_list", "/etc/secret"]
    config["linux"]["readonlyPaths"] = ["/proc/sys"]
    (bundle / "rootfs/etc").mkdir(exist_ok=True)
    (bundle / "rootfs/etc/secret").write_text("hidden\n")
    # seccomp: mkdir is left out of the allow rules, so the default action answers it, with
    # defaultErrnoRet (EACCES) instead of the profile's ENOSYS; flags are accepted.
    profile = oci.seccomp_for(seccomp.default_profile(), ["KILL", "NET_BIND_SERVICE"])
    for rule in profile["syscalls"]:
        rule["names"] = [n for n in rule["names"] if n not in ("mkdir", "mkdirat")]
    profile["syscalls"] = [r for r in profile["syscalls"] if r["names"]]
    profile["defaultAction"] = "SCMP_ACT_ERRNO"
    profile["defaultErrnoRet"] = 13
    profile["flags"] = ["SECCOMP_FILTER_FLAG_SPEC_ALLOW"]
    config["linux"]["seccomp"] = profile
    config["linux"]["cgroupsPath"] = "/sandbox-runtime-test/c6"
    config["hostname"] = "oci-host"
    write_config(bundle, config)
    script = "; ".join(
        [
            "cat /proc/self/uid_map /proc/self/gid_map",
            "grep ' /mnt/t ' /proc/mounts",
            "cat /mnt/ro/file",
            "echo x > /mnt/ro/new 2>/dev/null && echo ro-writable || echo ro-refused",
            "echo limit=$(ulimit -n)",
            "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status",
            "echo oom=$(cat /proc/self/oom_score_adj)",
            "echo ping=$(cat /proc/sys/net/ipv4/ping_group_range)",
            "echo timers=$(wc -c < /proc/timer_list) secret=$(cat /etc/secret)",
            "echo 1 > /proc/sys/net/ipv4/ip_forward 2>/dev/null && echo sys-writable "
            "|| echo sys-refused",
            "mkdir /tmp/d 2>&1; echo hostname=$(hostname)",
            "echo umask=$(umask)",
        ]
    )
    out = _observe(rt, bundle, script, "c6")
    lines = out.splitlines()
    assert lines[0].split() == ["0", str(uid), "1"]
    assert lines[1].split() == ["1", str(ranges[0][0]), str(ranges[0][1])]
    assert any(line.split() == ["0", str(os.getgid()), "1"] for line in lines[2:4])
    tmpfs = next(line for line in lines if " /mnt/t " in line)
    assert "nosuid" in tmpfs and "nodev" in tmpfs and "size=1024k" in tmpfs and "mode=700" in tmpfs
    assert "host-data" in lines and "ro-refused" in lines
    assert "limit=64" in lines
    caps = (1 << 5) | (1 << 10)  # CAP_KILL, CAP_NET_BIND_SERVICE
    assert f"CapEff:\t{caps:016x}" in lines and f"CapBnd:\t{caps:016x}" in lines
    assert "NoNewPrivs:\t1" in lines and "Seccomp:\t2" in lines
    assert "oom=500" in lines
    assert "ping=0 2000" in [" ".join(line.split()) for line in lines]
    assert "timers=0 secret=" in lines, out
    assert "sys-refused" in lines
    assert any("mkdir" in line and "Permission denied" in line for line in lines), out
    assert "hostname=oci-host" in lines
    assert "umask=0027" in lines


def test_terminal_and_console_size_through_the_console_socket(
    rt: Runtime, tmp_path: Path, busybox_tarball: Path
) -> None:
    bundle = make_bundle(
        tmp_path / "b",
        busybox_tarball,
        terminal=True,
        args=["sh", "-c", "tty; stty size"],
        consoleSize={"height": 33, "width": 101},
    )
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = tmp_path / "console.sock"
    server.bind(str(path))
    server.listen(1)
    server.settimeout(30)
    argv = [*RUNTIME, "--root", str(rt.root), "create", "--bundle", str(bundle)]
    argv += ["--console-socket", str(path), "c7"]
    with open(tmp_path / "c7.err", "w") as err:  # a file: PID 1 keeps it open
        create = subprocess.Popen(
            argv, env=env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
        )
    conn, _ = server.accept()
    fds = array.array("i")
    _, ancillary, _, _ = conn.recvmsg(64, socket.CMSG_SPACE(fds.itemsize))
    conn.close()
    server.close()
    fds.frombytes(ancillary[0][2][: fds.itemsize])
    master = fds[0]
    assert create.wait(timeout=30) == 0, (tmp_path / "c7.err").read_text()
    assert rt("start", "c7").returncode == 0
    output = b""
    deadline = time.monotonic() + 20
    while b"101" not in output and time.monotonic() < deadline:
        try:
            chunk = os.read(master, 1024)
        except OSError:
            break
        output += chunk
    os.close(master)
    assert output.split() == [b"/dev/pts/0", b"33", b"101"], output
    rt.wait_status("c7", "stopped")
    assert rt("delete", "c7").returncode == 0


def test_hooks_run_at_their_points_with_the_state(
    rt: Runtime, tmp_path: Path, busybox_tarball: Path
) -> None:
    bundle = make_bundle(tmp_path / "b", busybox_tarball, args=["true"])
    (tmp_path / "rec").mkdir()
    record = tmp_path / "rec/hooks.log"
    hook = tmp_path / "hook.sh"
    hook.write_text(f'#!/bin/sh\nread state\necho "$1 $state" >> {record}\n')
    hook.chmod(0o755)
    # createContainer and startContainer run inside the container: paths are its own (/rec bound).
    inside = bundle / "rootfs/hook.sh"
    inside.write_text(
        '#!/bin/sh\nread state\necho "$1 $state" >> /rec/hooks.log\n'
        "hostname >> /rec/where; readlink /proc/self/ns/pid >> /rec/where\n"
    )
    inside.chmod(0o755)
    config = config_of(bundle)
    config["mounts"].append(
        {
            "destination": "/rec",
            "type": "bind",
            "source": str(tmp_path / "rec"),
            "options": ["rbind", "rw"],
        }
    )
    config["hostname"] = "hooked"
    config["hooks"] = {
        kind: [{"path": str(hook), "args": ["hook.sh", kind]}]
        for kind in ("prestart", "createRuntime", "poststart", "poststop")
    }
    for kind in ("createContainer", "startContainer"):
        config["hooks"][kind] = [{"path": "/hook.sh", "args": ["x", kind]}]
    write_config(bundle, config)
    rt.run_to_end(bundle, "c8")
    entries = [line.split(" ", 1) for line in record.read_text().splitlines()]
    assert [kind for kind, _ in entries] == [
        "prestart",
        "createRuntime",
        "createContainer",
        "startContainer",
        "poststart",
        "poststop",
    ]
    states = [json.loads(state) for _, state in entries]
    assert all(s["id"] == "c8" and s["bundle"] == str(bundle) for s in states)
    assert states[0]["status"] == "created" and states[-1]["status"] == "stopped"
    where = (tmp_path / "rec/where").read_text().split()
    assert where[::2] == ["hooked", "hooked"]
    assert os.readlink("/proc/self/ns/pid") not in where
    # A failing createRuntime hook fails create and leaves nothing behind.
    config["hooks"] = {"createRuntime": [{"path": "/bin/false"}]}
    write_config(bundle, config)
    with open(tmp_path / "log", "w") as log:
        done = rt("create", "--bundle", bundle, "c9", stdout=log)
    assert done.returncode != 0
    assert "hooks.createRuntime[0]" in (tmp_path / "log").read_text()
    assert rt("state", "c9").returncode != 0
    # A createContainer hook still running after its timeout is killed, and fails create.
    config["hooks"] = {
        "createContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "sleep 60"], "timeout": 1}]
    }
    write_config(bundle, config)
    with open(tmp_path / "log", "w") as log:
        done = rt("create", "--bundle", bundle, "c10", stdout=log)
    message = (tmp_path / "log").read_text()
    assert done.returncode != 0
    assert "hooks.createContainer[0] timed out after 1 s" in message, message
    assert rt("state", "c10").returncode != 0


def test_refusals_name_the_field(rt: Runtime, tmp_path: Path, busybox_tarball: Path) -> None:
    bundle = make_bundle(tmp_path / "b", busybox_tarball, args=["true"])
    base = config_of(bundle)
    cases = [
        (["linux", "resources"], {"memory": {"limit": 64 << 20}}, "linux.resources"),
        (
            ["linux", "seccomp"],
            {"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/x"},
            "linux.seccomp.listenerPath",
        ),
        (["process", "capabilities"], {"ambient": ["CAP_KILL"]}, "process.capabilities.ambient"),
        (["linux", "namespaces"], [{"type": "mount"}, {"type": "pid"}], "linux.namespaces"),
        (["process", "user"], {"uid": 0, "gid": 0, "umask": 0o1777}, "process.user.umask"),
        (
            ["linux", "uidMappings"],
            [{"containerID": 0, "hostID": 0, "size": 1}],
            "linux.uidMappings",
        ),
    ]
    for (section, key), value, field in cases:
        config = json.loads(json.dumps(base))
        config[section][key] = value
        write_config(bundle, config)
        with open(tmp_path / "log", "w") as log:
            done = rt(
                "--log-format",
                "json",
                "--log",
                tmp_path / "rt.log",
                "create",
                "--bundle",
                bundle,
                "bad",
                stdout=log,
            )
        message = (tmp_path / "log").read_text()
        assert done.returncode == 125 and field in message, (field, message)
        assert "Traceback" not in message
        assert rt("state", "bad").returncode != 0  # nothing left behind
    logged = [json.loads(line) for line in (tmp_path / "rt.log").read_text().splitlines()]
    assert {e["level"] for e in logged} == {"error"} and all("time" in e for e in logged)
    assert "linux.resources" in logged[0]["msg"]


def test_nested_in_a_user_namespace_joins_namespaces_by_path(
    rt: Runtime, tmp_path: Path, busybox_tarball: Path
) -> None:
    """As podman runs it: inside a user namespace of ours, where we are root with the whole
    mapping; configs without a user namespace create none, one with mappings gets them
    written directly, and a namespace of another container is joined by its path."""
    first = make_bundle(tmp_path / "a", busybox_tarball, args=["sleep", "300"])
    second = make_bundle(tmp_path / "b", busybox_tarball)
    for bundle in (first, second):
        config = config_of(bundle)
        config["linux"]["namespaces"] = [
            n for n in config["linux"]["namespaces"] if n["type"] != "user"
        ]
        del config["linux"]["uidMappings"], config["linux"]["gidMappings"]
        write_config(bundle, config)
    config = config_of(second)
    config["process"]["args"] = [
        "sh",
        "-c",
        "readlink /proc/self/ns/net; readlink /proc/self/ns/user; cat /proc/self/uid_map",
    ]
    write_config(second, config)
    script = tmp_path / "nested.sh"
    rt_cmd = " ".join([*RUNTIME, "--root", str(rt.root)])
    script.write_text(f"""set -e
{rt_cmd} create --bundle {first} a > {tmp_path}/a.log 2>&1
{rt_cmd} start a
pid=$({rt_cmd} state a | sed -n 's/.*"pid": \\([0-9]*\\).*/\\1/p')
readlink /proc/$pid/ns/net /proc/self/ns/user; cat /proc/self/uid_map; echo ---
python3 - {second}/config.json $pid <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
c["linux"]["namespaces"] = [n for n in c["linux"]["namespaces"] if n["type"] != "network"]
c["linux"]["namespaces"].append({{"type": "network", "path": f"/proc/{{sys.argv[2]}}/ns/net"}})
json.dump(c, open(sys.argv[1], "w"))
EOF
{rt_cmd} run --bundle {second} b; echo ---
python3 - {second}/config.json <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
c["linux"]["namespaces"] = [n for n in c["linux"]["namespaces"] if n["type"] != "network"]
c["linux"]["namespaces"] += [{{"type": "user"}}, {{"type": "network"}}]
m = [{{"containerID": 0, "hostID": 0, "size": 1}},
     {{"containerID": 1, "hostID": 1000, "size": 100}}]
c["linux"]["uidMappings"] = c["linux"]["gidMappings"] = m
c["process"]["args"] = ["cat", "/proc/self/uid_map"]
json.dump(c, open(sys.argv[1], "w"))
EOF
{rt_cmd} run --bundle {second} c
{rt_cmd} delete --force a
""")
    done = subprocess.run(
        [*RUNTIME[:1], "-m", "sandbox", "unshare", "sh", str(script)],
        env={**env(), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    ours, in_b, in_c = (part.strip().splitlines() for part in done.stdout.split("---\n"))
    assert in_b[0] == ours[0]  # b joined a's network namespace by its path
    assert in_b[1] == ours[1]  # and created no user namespace of its own
    assert in_b[2:] == ours[2:]  # so its ids are ours, as they are
    # Written directly to /proc/PID/uid_map (newuidmap checks the host's subordinate ids).
    assert [line.split() for line in in_c] == [["0", "0", "1"], ["1", "1000", "100"]]


def _subids() -> list[tuple[int, int]]:
    from sandbox.rootless import idmap

    mapping = idmap.for_current_user("auto")
    return [(r.outside, r.size) for r in mapping.uids if r.inside != 0][:1] or [(0, 0)]


def test_preserve_fds_pass_on_to_the_process(
    rt: Runtime, tmp_path: Path, busybox_tarball: Path
) -> None:
    bundle = make_bundle(
        tmp_path / "b", busybox_tarball, args=["sh", "-c", "echo through-fd3 >&3; ls /proc/self/fd"]
    )
    out = tmp_path / "fd3"
    command = " ".join([*RUNTIME, "--root", str(rt.root), "run", "--preserve-fds", "1"])
    done = subprocess.run(
        ["sh", "-c", f"exec 3>{out}; exec {command} --bundle {bundle} c10"],
        env=env(),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert out.read_text() == "through-fd3\n"
    # Nothing else leaked in (4 is the directory ls itself is reading).
    assert done.stdout.split() == ["0", "1", "2", "3", "4"]
