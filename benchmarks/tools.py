"""The engines the benchmark compares, each set up in a private directory of the bench user.

sandbox and podman get their own storage and runtime directories under the bench directory
(default ~/.cache/sandbox-bench), so a run neither reads nor disturbs the user's containers.
podman runs rootless with `--runtime runc --cgroup-manager cgroupfs --events-backend file`:
crun 1.8 refuses hybrid cgroup hosts, there is no systemd to be the cgroup manager, and no
journald to take the events. bwrap runs over the unpacked rootfs of the same tarball.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


class BenchError(Exception):
    """A step of the benchmark failed; the message says which command and why."""


def run(
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    check: bool = True,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        list(argv), env=env, capture_output=True, text=True, timeout=timeout, cwd="/"
    )
    if check and done.returncode != 0:
        raise BenchError(
            f"`{' '.join(argv)}` exited {done.returncode}: {(done.stderr or done.stdout)[-800:]}"
        )
    return done


def timed(argv: Sequence[str], env: Mapping[str, str] | None = None) -> float:
    """Wall-clock seconds of one run of argv (output discarded; a failure is an error)."""
    start = time.perf_counter()
    done = subprocess.run(
        list(argv), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd="/"
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise BenchError(
            f"`{' '.join(argv)}` exited {done.returncode}: {done.stderr.decode()[-800:]}"
        )
    return elapsed


def python_env(work: Path, installed: bool) -> dict[str, str]:
    """The environment for sandbox and podman: private XDG dirs under work."""
    env = dict(os.environ)
    runtime = work / "run"
    runtime.mkdir(parents=True, exist_ok=True)
    runtime.chmod(0o700)
    (work / "config").mkdir(parents=True, exist_ok=True)
    env.update(
        XDG_RUNTIME_DIR=str(runtime),
        XDG_CONFIG_HOME=str(work / "config"),
        XDG_DATA_HOME=str(work / "data"),
    )
    if not installed:  # the interpreter has the dependencies but not the project: this tree
        env["PYTHONPATH"] = str(REPO)
    return env


class Sandbox:
    name = "sandbox"

    def __init__(self, work: Path, env: Mapping[str, str], data: Path | None = None):
        self.work = work
        self.env = dict(env)
        if data is not None:
            self.env["XDG_DATA_HOME"] = str(data)
        self.argv = [sys.executable, "-m", "sandbox"]

    def cmd(self, *args: str) -> list[str]:
        return [*self.argv, *args]

    def with_data(self, data: Path) -> Sandbox:
        return Sandbox(self.work, self.env, data)


class Podman:
    name = "podman"

    def __init__(self, work: Path, env: Mapping[str, str], root: Path | None = None):
        self.work = work
        self.env = dict(env)
        self.root = root or work / "podman"
        # podman refuses a runroot longer than 50 characters; the hash keeps two benches with
        # different --work directories (run at the same time) apart.
        tag = hashlib.sha256(str(work).encode()).hexdigest()[:8]
        runroot = Path(f"/tmp/sandbox-bench-{os.getuid()}") / f"{tag}-{self.root.name}"
        self.argv = [
            "podman",
            "--root",
            str(self.root / "root"),
            "--runroot",
            str(runroot),
            "--tmpdir",
            str(self.root / "tmp"),
            "--runtime",
            "runc",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
        ]

    @staticmethod
    def available() -> str | None:
        """None when podman is usable here, else why not."""
        if shutil.which("podman") is None:
            return "podman is not installed (apt-get install podman)"
        if shutil.which("runc") is None:
            return "runc is not installed (apt-get install runc)"
        return None

    def cmd(self, *args: str) -> list[str]:
        return [*self.argv, *args]

    def stop_pause(self) -> None:
        """End the pause process podman started for this root (one per --tmpdir)."""
        pid = self.pause_pid()
        if pid is not None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)

    def with_root(self, root: Path) -> Podman:
        return Podman(self.work, self.env, root)

    def version(self) -> str:
        return run(["podman", "--version"]).stdout.strip()

    def pause_pid(self) -> int | None:
        """The rootless pause process podman keeps (it holds the user namespace)."""
        path = self.root / "tmp/pause.pid"  # under --tmpdir
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            return None


class Bwrap:
    name = "bwrap"

    def __init__(self, work: Path):
        self.work = work / "bwrap"

    @staticmethod
    def available() -> str | None:
        if shutil.which("bwrap") is None:
            return "bwrap is not installed (apt-get install bubblewrap)"
        return None

    def rootfs(self, tarball: Path, name: str) -> Path:
        """The tarball unpacked once (owners become the bench user; bwrap maps only that)."""
        root = self.work / name
        if not (root / "bin").exists():
            root.mkdir(parents=True, exist_ok=True)
            # Our own test tarballs; device nodes (which a user cannot create) left out.
            run(
                [
                    "tar",
                    "-C",
                    str(root),
                    "-xf",
                    str(tarball),
                    "--no-same-owner",
                    "--exclude=./dev/*",
                ]
            )
            # Directories an image ships read-only (/proc, /sys) must stay writable for rm.
            for path in (root, *root.rglob("*")):
                if path.is_dir() and not path.is_symlink():
                    path.chmod(path.stat().st_mode | 0o700)
        return root

    def cmd(self, root: Path, *args: str) -> list[str]:
        return [
            "bwrap",
            "--unshare-all",
            "--uid",
            "0",
            "--gid",
            "0",
            "--bind",
            str(root),
            "/",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            *args,
        ]


def iperf3_bundle(dest: Path) -> Path:
    """The host's iperf3 with its shared libraries and loader, to bind into a container.

    Run inside as `DEST/ld.so --library-path DEST DEST/iperf3`, so any image works.
    """
    binary = shutil.which("iperf3")
    if binary is None:
        raise BenchError("iperf3 is not installed (apt-get install iperf3)")
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(binary, dest / "iperf3")
    for line in run(["ldd", binary]).stdout.splitlines():
        parts = line.split()
        path = next((p for p in parts if p.startswith("/")), None)
        if path is None:
            continue
        target = dest / ("ld.so" if "ld-linux" in path else Path(path).name)
        shutil.copy2(path, target)
    if not (dest / "ld.so").exists():
        raise BenchError(f"no program loader found in `ldd {binary}`")
    return dest


def iperf3_argv(bundle_mount: str, *args: str) -> list[str]:
    return [
        f"{bundle_mount}/ld.so",
        "--library-path",
        bundle_mount,
        f"{bundle_mount}/iperf3",
        *args,
    ]


def throughput(iperf_json: str) -> float:
    """Gbit/s the receiver saw, from iperf3 -J output."""
    data = json.loads(iperf_json)
    if "error" in data:
        raise BenchError(f"iperf3: {data['error']}")
    return float(data["end"]["sum_received"]["bits_per_second"]) / 1e9


def bits_sent(iperf_json: str) -> float:
    """Every bit the client sent, the omitted (-O) seconds included, from iperf3 -J output."""
    data = json.loads(iperf_json)
    return sum(float(i["sum"]["bytes"]) * 8 for i in data.get("intervals", []))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time one process has used so far (from /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_with_argument(names: tuple[str, ...], argument: str) -> int:
    """The pid of this user's process whose name starts with one of names and which has
    argument among its arguments (such as the slirp4netns serving a container: its PID 1's
    pid, or podman's netns path). Debian's pasta runs as passt.avx2 where the CPU has AVX2."""
    # Not host_processes(): pasta makes itself non-dumpable, so its /proc/PID/ns is closed.
    uid = os.getuid()
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
            arguments = Path(f"/proc/{entry}/cmdline").read_bytes().decode().split("\0")[1:]
        except (OSError, UnicodeDecodeError):
            continue
        if comm.startswith(names) and argument in arguments:
            return int(entry)
    raise BenchError(f"no {' or '.join(names)} process with the argument {argument}")


def memory(pid: int) -> tuple[int, int]:
    """(Rss, Pss) in KiB of one process, from /proc/PID/smaps_rollup."""
    rss = pss = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key == "Rss":
            rss = int(rest.split()[0])
        elif key == "Pss":
            pss = int(rest.split()[0])
    return rss, pss


def host_processes() -> dict[int, tuple[int, str, str]]:
    """pid -> (ppid, comm, cmdline) of this user's processes in this PID namespace."""
    own_ns = os.stat("/proc/self/ns/pid").st_ino
    uid = os.getuid()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            if os.stat(f"/proc/{pid}/ns/pid").st_ino != own_ns:
                continue
            stat = Path(f"/proc/{pid}/stat").read_text()
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        found[pid] = (ppid, comm, cmdline.strip())
    return found


def settle(baseline: set[int], timeout: float = 10.0) -> None:
    """Before a timed run: wait until the previous run's leftovers are gone, then write back the
    dirty pages, so that no run is charged with another tool's aftermath.

    `podman run --rm` returns while its conmon's exit command (`podman container cleanup`)
    still runs, and any tool leaves dirty pages that the kernel writes back later: on 2 CPUs
    either lands in the next tool's timed run. Processes that were there before (baseline: the
    bench itself, servers, detached containers) and podman's pause process may stay.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        strays = [
            pid
            for pid, (_, comm, _) in host_processes().items()
            if pid not in baseline and comm != "catatonit"
        ]
        if not strays:
            break
        time.sleep(0.01)
    os.sync()
    _cpus_quiet(min(deadline, time.monotonic() + 1.0))  # a busy machine: not for ever


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs so far, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _cpus_quiet(deadline: float, window: float = 0.1, busy_at_most: float = 0.1) -> None:
    """Wait (until deadline at most) for a window in which the CPUs are nearly idle: the
    kernel finishes a run's teardown after its processes are gone (a network namespace is
    dismantled by a kernel worker, ~20 ms for a tap device), and that CPU time would land in
    the next tool's run."""
    while time.monotonic() < deadline:
        busy, total = _cpu_ticks()
        time.sleep(window)
        busy_after, total_after = _cpu_ticks()
        if total_after == total or (busy_after - busy) / (total_after - total) <= busy_at_most:
            return


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def remove_tree(sandbox: Sandbox, path: Path) -> None:
    """rm -rf a directory that may hold files owned by subordinate ids."""
    if path.exists():
        run(sandbox.cmd("unshare", "rm", "-rf", str(path)), sandbox.env)
    if path.exists():
        shutil.rmtree(path)
