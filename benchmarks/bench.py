"""sandbox side by side with podman (rootless, runc) and bwrap: `nox -s bench`.

Each scenario runs the tools alternately, round by round (the order rotates each round), on the
same image, after warm-up rounds, and prints medians and the ratio sandbox/peer next to the
issue's goal. The results table and the command that reproduces it replace the block between
the markers in docs/benchmarks.md (or the file --results names).

As root, the script hands itself over to the unprivileged bench user (SANDBOX_BENCH_USER,
default sbtest): rootless is the product, so root's figures would prove nothing.

    python benchmarks/bench.py [--quick] [--only 1,2,...] [--results FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import importlib.util
import os
import platform
import pwd
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

# Whether this interpreter has sandbox installed; if not, the engines run from this tree.
INSTALLED = importlib.util.find_spec("sandbox") is not None
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import tools  # noqa: E402
from benchmarks.tools import BenchError, Bwrap, Podman, Sandbox  # noqa: E402
from sandbox.runtime.network import SLIRP4NETNS_MTU  # noqa: E402

REPO = tools.REPO
DOC = REPO / "docs" / "benchmarks.md"
BEGIN = "<!-- bench:begin (written by benchmarks/bench.py) -->"
END = "<!-- bench:end -->"
DEBIAN_TARBALL = Path(
    os.environ.get("SANDBOX_TEST_DEBIAN_TARBALL", "/var/cache/sandbox-tests/debian-bookworm.tar")
)
COMMAND = "nox -s bench"
# iperf3 -t of one throughput round (scenario 4); the first of them is left out (-O 1).
THROUGHPUT_SECONDS = "5"


@dataclasses.dataclass
class Row:
    scenario: str
    what: str
    figures: dict[str, float]  # tool -> median
    unit: str
    runs: int
    goal: str = ""
    ratio_of: tuple[str, str] | None = None  # (numerator, denominator) for the goal
    limit: float | None = None  # the goal's bound on that ratio
    at_least: bool = False  # the goal is ratio >= limit (throughput) instead of <=

    def ratio(self) -> float | None:
        if self.ratio_of is None:
            return None
        a, b = self.ratio_of
        if a not in self.figures or b not in self.figures or self.figures[b] == 0:
            return None
        return self.figures[a] / self.figures[b]

    def verdict(self) -> str:
        ratio = self.ratio()
        if ratio is None or self.limit is None:
            return ""
        met = ratio >= self.limit if self.at_least else ratio <= self.limit
        return "met" if met else "MISSED"


@dataclasses.dataclass
class Bench:
    work: Path
    sandbox: Sandbox
    podman: Podman | None
    bwrap: Bwrap | None
    runs: int
    warmup: int
    rows: list[Row] = dataclasses.field(default_factory=list)
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def skip(self, scenario: str, reason: str) -> None:
        reason = " ".join(reason.split())  # one line in the report
        print(f"  skipped: {reason}", flush=True)
        self.skipped.append((scenario, reason))

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print("  " + _format_row(row), flush=True)


def alternate(
    variants: dict[str, Callable[[], float]], runs: int, warmup: int
) -> dict[str, list[float]]:
    """Run each variant once per round, rotating the order; keep the rounds after warm-up.
    Each run starts once the one before has settled (tools.settle)."""
    names = list(variants)
    samples: dict[str, list[float]] = {name: [] for name in names}
    baseline = set(tools.host_processes())
    for round_ in range(warmup + runs):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            tools.settle(baseline)
            value = variants[name]()
            if round_ >= warmup:
                samples[name].append(value)
    return samples


def medians(samples: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(values) for name, values in samples.items()}


def _format_row(row: Row) -> str:
    figures = ", ".join(f"{tool} {_num(v)} {row.unit}" for tool, v in row.figures.items())
    ratio = row.ratio()
    tail = ""
    if ratio is not None and row.ratio_of is not None:
        tail = f"  ratio {row.ratio_of[0]}/{row.ratio_of[1]} = {ratio:.2f}"
        if row.goal:
            tail += f" (goal {row.goal}: {row.verdict()})"
    return f"{row.what}: {figures}{tail}"


def _num(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


# ----------------------------------------------------------------------------------------------
# Scenarios


def scenario_run(b: Bench, images: dict[str, tuple[Path, Path | None]]) -> None:
    """1. run --rm IMAGE true, no network (so it measures creation), busybox and Debian."""
    sandbox_median: dict[str, float] = {}
    for image, (_tarball, rootfs) in images.items():
        # functools.partial binds this image (a lambda would see the loop's last one).
        variants: dict[str, Callable[[], float]] = {
            "sandbox": functools.partial(
                tools.timed,
                b.sandbox.cmd("run", "--rm", "--network", "none", image, "true"),
                b.sandbox.env,
            )
        }
        if b.podman is not None:
            variants["podman"] = functools.partial(
                tools.timed,
                b.podman.cmd("run", "--rm", "--network", "none", image, "true"),
                b.podman.env,
            )
        if b.bwrap is not None and rootfs is not None:
            variants["bwrap"] = functools.partial(tools.timed, b.bwrap.cmd(rootfs, "true"))
        figures = medians(alternate(variants, b.runs, b.warmup))
        ms = {tool: v * 1000 for tool, v in figures.items()}
        sandbox_median[image] = ms["sandbox"]
        for peer in [t for t in ms if t != "sandbox"]:
            goal = image == "busybox" and peer == "podman"
            b.add(
                Row(
                    "1",
                    f"run --rm {image} true ({peer})",
                    {"sandbox": ms["sandbox"], peer: ms[peer]},
                    "ms",
                    b.runs,
                    goal="<= 0.4" if goal else "",
                    ratio_of=("sandbox", peer),
                    limit=0.4 if goal else None,
                )
            )
    if "debian" in sandbox_median:
        # Alternated on their own: next to podman's Debian runs (seconds of I/O each here)
        # sandbox's runs would measure podman's aftermath, not the image size.
        def sandbox_run(image: str) -> float:
            argv = b.sandbox.cmd("run", "--rm", "--network", "none", image, "true")
            return tools.timed(argv, b.sandbox.env) * 1000

        pair = medians(
            alternate(
                {
                    "debian": lambda: sandbox_run("debian"),
                    "busybox": lambda: sandbox_run("busybox"),
                },
                b.runs,
                b.warmup,
            )
        )
        b.add(
            Row(
                "1",
                "run --rm true, Debian vs busybox (sandbox alone)",
                pair,
                "ms",
                b.runs,
                goal="<= 1.1",
                ratio_of=("debian", "busybox"),
                limit=1.1,
            )
        )


def scenario_version(b: Bench) -> None:
    """2. `sandbox --version` against a bare typer app with one command."""
    bare = [sys.executable, str(REPO / "benchmarks" / "bare_typer.py"), "--version"]
    variants = {
        "sandbox": lambda: tools.timed(b.sandbox.cmd("--version"), b.sandbox.env),
        "bare typer": lambda: tools.timed(bare, b.sandbox.env),
    }
    ms = {k: v * 1000 for k, v in medians(alternate(variants, b.runs * 2, b.warmup)).items()}
    b.add(
        Row(
            "2",
            "--version",
            ms,
            "ms",
            b.runs * 2,
            goal="<= 1.2",
            ratio_of=("sandbox", "bare typer"),
            limit=1.2,
        )
    )


def scenario_pull(b: Bench, debian: Path | None) -> None:
    """3. pull of the Debian image from a registry on 127.0.0.1 into an empty store."""
    if debian is None:
        b.skip("3", f"no Debian tarball at {DEBIAN_TARBALL} (scripts/test.sh builds it)")
        return
    from tests.support import oci
    from tests.support.registry import Registry, RegistryUnavailable

    try:
        registry = Registry(b.work / "registry").start()
    except RegistryUnavailable as e:
        b.skip("3", str(e))
        return
    # Every round's store is removed after the last round, not between rounds: this ext4 has
    # no journal, and then its inode allocator skips every inode freed in the last minutes,
    # one by one, for each file it creates. A pull right after the removal of the previous
    # store (thousands of inodes in the same block groups) paid that (2-4 s of kernel time
    # here), whichever tool it was: run sandbox-first and podman-first, the one that ran
    # second took about half the time of the other.
    used: list[Path] = []
    try:
        # As tests/integration/test_registry.py does: one gzip layer, pushed by skopeo.
        layout = oci.Layout(b.work / "debian-layout")
        layer = layout.layer_from_file(debian, "gzip")
        layer_mb = layer[0]["size"] / 1e6
        layout.tag(layout.image([layer]), "bookworm")
        registry.push_layout(layout.root, "bookworm", "bench/debian:bookworm")
        ref = f"{registry.host}/bench/debian:bookworm"
        stores = b.work / "pull"
        counter = iter(range(10_000))

        def sandbox_pull() -> float:
            data = stores / f"sandbox-{next(counter)}"
            used.append(data)
            engine = b.sandbox.with_data(data)
            return tools.timed(engine.cmd("pull", "-q", "--tls-verify=false", ref), engine.env)

        variants: dict[str, Callable[[], float]] = {"sandbox": sandbox_pull}
        if b.podman is not None:
            podman = b.podman

            def podman_pull() -> float:
                root = stores / f"podman-{next(counter)}"
                used.append(root)
                engine = podman.with_root(root)
                try:
                    return tools.timed(
                        engine.cmd("pull", "--quiet", "--tls-verify=false", ref), engine.env
                    )
                finally:
                    engine.stop_pause()

            variants["podman"] = podman_pull
        # Seven rounds (five with --quick): a pull takes seconds of CPU, and on a shared
        # 2-core machine one round of either tool can take twice its median.
        runs = max(5, b.runs // 2)
        samples = alternate(variants, runs, 1)
        _print_spread(samples)  # every round, to tell a tie from noise
        s = medians(samples)
        peer = "podman" if "podman" in s else None
        b.add(
            Row(
                "3",
                f"pull Debian ({layer_mb:.0f} MB gzip layer) into an empty store",
                s,
                "s",
                runs,
                goal="<= 0.8" if peer else "",
                ratio_of=("sandbox", peer) if peer else None,
                limit=0.8 if peer else None,
            )
        )
    finally:
        registry.stop()
        for path in used:
            tools.remove_tree(b.sandbox, path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _iperf_server(port: int) -> Iterator[None]:
    # A session of its own, so a scheduler autogroup of its own: podman leaves its
    # slirp4netns in its caller's session (ours), sandbox's is in its monitor's; the server
    # competes with neither.
    server = subprocess.Popen(
        ["iperf3", "-s", "-B", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield
    finally:
        server.terminate()
        server.wait()


def scenario_throughput(b: Bench) -> None:
    """4. TCP throughput container -> host with iperf3, over slirp4netns and over pasta.

    Every engine's container is started the same way, detached (`run -d ... sleep`), before
    any measurement; each round then `exec`s one iperf3 client into each container in turn
    (order rotated), after a warm-up round, and the medians are compared. The first second of
    each transfer (slow start) is left out of the figure (`iperf3 -O 1`).
    """
    try:
        bundle = tools.iperf3_bundle(b.work / "iperf3")
    except BenchError as e:
        b.skip("4", str(e))
        return
    volume = f"{bundle}:/iperf:ro"
    timing = ("-t", THROUGHPUT_SECONDS, "-O", "1", "-J")
    runs = max(5, b.runs // 2)

    # slirp4netns: the client runs in the container and reaches the host's 127.0.0.1 at
    # 10.0.2.2 (allow_host_loopback), the same way for both engines.
    if shutil.which("slirp4netns") is None:
        b.skip("4", "slirp4netns is not installed (apt-get install slirp4netns)")
    else:
        port = _free_port()
        client = tools.iperf3_argv("/iperf", "-c", "10.0.2.2", "-p", str(port), *timing)
        network = "slirp4netns:allow_host_loopback=true"
        # Each engine with its own default MTU (sandbox 16384, podman 65520), and podman once
        # more at sandbox's MTU: that row shows how much of the difference is the MTU alone.
        containers: list[tuple[str, Sandbox | Podman, str]] = [("sandbox", b.sandbox, network)]
        if b.podman:
            containers.append(("podman", b.podman, network))
            containers.append(
                (
                    f"podman mtu={SLIRP4NETNS_MTU}",
                    b.podman,
                    f"{network},mtu={SLIRP4NETNS_MTU}",
                )
            )
        # Per container: bits sent per CPU-second of its slirp4netns, each round: the work the
        # engine's set-up makes the helper do per bit.
        efficiency: dict[str, list[float]] = {label: [] for label, _, _ in containers}
        with contextlib.ExitStack() as stack:
            variants: dict[str, Callable[[], float]] = {}
            for index, (label, engine, option) in enumerate(containers):
                name = f"benchnet{index}"
                pid1 = stack.enter_context(
                    _detached(engine, name, "--network", option, "-v", volume)
                )
                try:
                    helper: int | None = tools.process_with_argument(
                        ("slirp4netns",), _netns_argument(engine, name, pid1)
                    )
                except BenchError as e:  # then no efficiency row, but still the throughput
                    print(f"  {label}: {e}", flush=True)
                    helper = None

                def measure(
                    label: str = label,
                    engine: Sandbox | Podman = engine,
                    name: str = name,
                    helper: int | None = helper,
                ) -> float:
                    argv = engine.cmd("exec", name, *client)
                    cpu = tools.cpu_seconds(helper) if helper else 0.0
                    out = tools.run(argv, engine.env).stdout
                    if helper:
                        cpu = tools.cpu_seconds(helper) - cpu
                        bits = tools.bits_sent(out)
                        efficiency[label].append(bits / 1e9 / max(cpu, 0.01))
                    return tools.throughput(out)

                variants[label] = measure
            with _iperf_server(port):
                samples = alternate(variants, runs, 1)
        _print_spread(samples)
        figures = medians(samples)
        peer = "podman" if "podman" in figures else None
        b.add(
            Row(
                "4",
                "TCP container->host, slirp4netns",
                figures,
                "Gbit/s",
                runs,
                goal=">= 1.0" if peer else "",
                ratio_of=("sandbox", peer) if peer else None,
                limit=1.0 if peer else None,
                at_least=True,
            )
        )
        # The warm-up round's figures are left out, as alternate() leaves out its throughput.
        efficiency = {tool: values[-runs:] for tool, values in efficiency.items() if values}
        if len(efficiency) == len(containers):
            _print_spread(efficiency)
            b.add(
                Row(
                    "4",
                    "slirp4netns: Gbit sent per CPU-second of slirp4netns",
                    medians(efficiency),
                    "Gbit/CPU-s",
                    runs,
                    ratio_of=("sandbox", peer) if peer else None,
                )
            )

    # pasta: sandbox runs it with --no-map-gw (the host's loopback stays closed), so the server
    # runs in the container behind a published port and the host client asks it to send (-R):
    # the data still flows container -> host.
    if shutil.which("pasta") is None:
        b.skip("4", "pasta is not installed (apt-get install passt)")
        return
    if b.podman is not None:
        podman_version = b.podman.version()
        if podman_version.endswith((" 4.0", " 4.1", " 4.2", " 4.3")) or " 4.3." in podman_version:
            b.skip(
                "4",
                f"{podman_version} has no pasta network backend (added in podman 4.4): "
                "sandbox over pasta is measured alone",
            )
    port = _free_port()
    name = "benchpasta"
    tools.run(b.sandbox.cmd("rm", "-f", name), b.sandbox.env, check=False)
    publish = f"127.0.0.1:{port}:5201"
    server = [*tools.iperf3_argv("/iperf", "-s")]
    tools.run(
        b.sandbox.cmd(
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "pasta",
            "-p",
            publish,
            "-v",
            volume,
            "busybox",
            *server,
        ),
        b.sandbox.env,
    )
    pasta_efficiency: list[float] = []
    try:
        client = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-R", *timing]
        inspect = b.sandbox.cmd("inspect", "--format", "{{.State.Pid}}", name)
        server_pid1 = tools.run(inspect, b.sandbox.env).stdout.strip()
        try:
            pasta_pid: int | None = tools.process_with_argument(("pasta", "passt"), server_pid1)
        except BenchError as e:
            print(f"  sandbox: {e}", flush=True)
            pasta_pid = None

        def pasta_round() -> float:
            # pasta listens on the host port at once; until the server listens inside, a
            # client is reset, so retry (only the first round waits).
            deadline = time.monotonic() + 20
            while True:
                cpu = tools.cpu_seconds(pasta_pid) if pasta_pid else 0.0
                done = subprocess.run(client, capture_output=True, text=True, cwd="/")
                if done.returncode == 0 and '"error"' not in done.stdout:
                    if pasta_pid:
                        cpu = tools.cpu_seconds(pasta_pid) - cpu
                        bits = tools.bits_sent(done.stdout)
                        pasta_efficiency.append(bits / 1e9 / max(cpu, 0.01))
                    return tools.throughput(done.stdout)
                if time.monotonic() > deadline:
                    raise BenchError(f"iperf3 over pasta: {done.stdout[-400:]}")
                time.sleep(0.3)

        samples = alternate({"sandbox": pasta_round}, runs, 1)
    finally:
        tools.run(b.sandbox.cmd("rm", "-f", name), b.sandbox.env, check=False)
    _print_spread(samples)
    b.add(Row("4", "TCP container->host, pasta (-p, iperf3 -R)", medians(samples), "Gbit/s", runs))
    if pasta_efficiency:
        per_cpu = {"sandbox": pasta_efficiency[-runs:]}
        _print_spread(per_cpu)
        what = "pasta: Gbit sent per CPU-second of pasta"
        b.add(Row("4", what, medians(per_cpu), "Gbit/CPU-s", runs))


def _netns_argument(engine: Sandbox | Podman, name: str, pid1: int) -> str:
    """What names the container's network namespace on its slirp4netns's command line."""
    if isinstance(engine, Podman):
        inspect = engine.cmd("inspect", "--format", "{{.NetworkSettings.SandboxKey}}", name)
        return tools.run(inspect, engine.env).stdout.strip()
    return str(pid1)


def _print_spread(samples: dict[str, list[float]]) -> None:
    for tool, values in samples.items():
        print(f"  {tool}: " + " ".join(_num(v) for v in values), flush=True)


@contextlib.contextmanager
def _detached(engine: Sandbox | Podman, name: str, *options: str) -> Iterator[int]:
    """A detached `busybox sleep` container; yields its PID 1 as the host sees it."""
    tools.run(engine.cmd("rm", "-f", name), engine.env, check=False)
    tools.run(
        engine.cmd("run", "-d", "--name", name, *options, "busybox", "sleep", "3600"), engine.env
    )
    try:
        pid = tools.run(
            engine.cmd("inspect", "--format", "{{.State.Pid}}", name), engine.env
        ).stdout.strip()
        yield int(pid)
    finally:
        tools.run(engine.cmd("rm", "-f", name), engine.env, check=False)


def scenario_memory(b: Bench) -> None:
    """5. Resident memory of the helpers one idle detached container keeps on the host."""
    engines: list[Sandbox | Podman] = [b.sandbox] + ([b.podman] if b.podman else [])
    figures_rss: dict[str, float] = {}
    figures_pss: dict[str, float] = {}
    for engine in engines:
        before = set(tools.host_processes())
        with _detached(engine, "benchmem") as pid1:
            time.sleep(1.0)  # let the helpers finish starting
            processes = tools.host_processes()
            helpers = {tools.parent_of(pid1)}  # the monitor (sandbox) or conmon (podman)
            for pid, (_ppid, comm, cmdline) in processes.items():
                if pid in before:
                    continue
                if comm.startswith(("slirp4netns", "pasta", "rootlessport")) and (
                    str(pid1) in cmdline.split() or str(b.work) in cmdline
                ):
                    helpers.add(pid)
            if isinstance(engine, Podman):
                pause = engine.pause_pid()
                if pause is not None:
                    helpers.add(pause)
            rss = pss = 0
            names = []
            for pid in sorted(helpers):
                r, p = tools.memory(pid)
                rss += r
                pss += p
                names.append(f"{processes.get(pid, (0, '?', ''))[1]} {p // 1024} MiB")
            print(f"  {engine.name}: " + ", ".join(names) + " (PSS)", flush=True)
            figures_rss[engine.name] = rss / 1024
            figures_pss[engine.name] = pss / 1024
    peer = "podman" if "podman" in figures_pss else None
    b.add(Row("5", "idle detached container, helpers' RSS", figures_rss, "MiB", 1))
    b.add(
        Row(
            "5",
            "idle detached container, helpers' PSS",
            figures_pss,
            "MiB",
            1,
            goal="<= 1.0" if peer else "",
            ratio_of=("sandbox", peer) if peer else None,
            limit=1.0 if peer else None,
        )
    )


def scenario_exec(b: Bench) -> None:
    """6. `exec CONTAINER true` into a running detached container."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(_detached(b.sandbox, "benchexec", "--network", "none"))
        variants: dict[str, Callable[[], float]] = {
            "sandbox": lambda: tools.timed(
                b.sandbox.cmd("exec", "benchexec", "true"), b.sandbox.env
            )
        }
        if b.podman is not None:
            podman = b.podman
            stack.enter_context(_detached(podman, "benchexec", "--network", "none"))
            variants["podman"] = lambda: tools.timed(
                podman.cmd("exec", "benchexec", "true"), podman.env
            )
        ms = {k: v * 1000 for k, v in medians(alternate(variants, b.runs, b.warmup)).items()}
    peer = "podman" if "podman" in ms else None
    b.add(
        Row(
            "6",
            "exec CONTAINER true",
            ms,
            "ms",
            b.runs,
            goal="<= 0.5" if peer else "",
            ratio_of=("sandbox", peer) if peer else None,
            limit=0.5 if peer else None,
        )
    )


def scenario_parallel(b: Bench, busybox_rootfs: Path | None, count: int = 20) -> None:
    """7. `count` containers started at once (run --rm busybox true, no network)."""

    def burst(argvs: list[list[str]], env: dict[str, str] | None) -> float:
        start = time.perf_counter()
        procs = [
            subprocess.Popen(a, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for a in argvs
        ]
        failures = [p.communicate()[1].decode()[-300:] for p in procs]
        elapsed = time.perf_counter() - start
        bad = [f for p, f in zip(procs, failures, strict=True) if p.returncode != 0]
        if bad:
            raise BenchError(f"{len(bad)} of {count} parallel runs failed: {bad[0]}")
        return elapsed

    run_args = ("run", "--rm", "--network", "none", "busybox", "true")
    variants: dict[str, Callable[[], float]] = {
        "sandbox": lambda: burst([b.sandbox.cmd(*run_args)] * count, b.sandbox.env)
    }
    if b.podman is not None:
        podman = b.podman
        variants["podman"] = lambda: burst([podman.cmd(*run_args)] * count, podman.env)
    if b.bwrap is not None and busybox_rootfs is not None:
        bwrap = b.bwrap
        variants["bwrap"] = lambda: burst([bwrap.cmd(busybox_rootfs, "true")] * count, None)
    runs = max(3, b.runs // 3)
    figures = medians(alternate(variants, runs, 1))
    for peer in [t for t in figures if t != "sandbox"]:
        b.add(
            Row(
                "7",
                f"{count} x run --rm busybox true in parallel ({peer})",
                {"sandbox": figures["sandbox"], peer: figures[peer]},
                "s",
                runs,
                ratio_of=("sandbox", peer),
            )
        )
    if len(figures) == 1:
        b.add(Row("7", f"{count} x run --rm busybox true in parallel", figures, "s", runs))


# ----------------------------------------------------------------------------------------------
# Set-up, report, entry point


def prepare(work: Path, quick: bool) -> tuple[Bench, dict[str, tuple[Path, Path | None]]]:
    from tests.support.images import ImageUnavailable, build_busybox_rootfs

    env = tools.python_env(work, INSTALLED)
    sandbox = Sandbox(work, env)
    reason = Podman.available()
    podman = Podman(work, env) if reason is None else None
    if reason:
        print(f"podman is left out: {reason}")
    reason = Bwrap.available()
    bwrap = Bwrap(work) if reason is None else None
    if reason:
        print(f"bwrap is left out: {reason}")
    try:
        busybox = build_busybox_rootfs(work / "busybox.tar")
    except ImageUnavailable as e:
        raise BenchError(f"cannot build the busybox image: {e}") from e
    tarballs = {"busybox": busybox}
    if DEBIAN_TARBALL.is_file():
        tarballs["debian"] = DEBIAN_TARBALL
    else:
        print(f"Debian is left out: no tarball at {DEBIAN_TARBALL} (scripts/test.sh builds it)")
    images: dict[str, tuple[Path, Path | None]] = {}
    for name, tarball in tarballs.items():
        print(f"importing {name} into each engine", flush=True)
        tools.run(sandbox.cmd("image", "import", str(tarball), name), env)
        if podman is not None:
            tools.run(podman.cmd("import", "--quiet", str(tarball), name), env)
        images[name] = (tarball, bwrap.rootfs(tarball, name) if bwrap else None)
    runs, warmup = (5, 1) if quick else (15, 2)
    return Bench(work, sandbox, podman, bwrap, runs, warmup), images


def markdown(b: Bench, elapsed: float) -> str:
    lines = [
        BEGIN,
        "",
        f"Measured {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC on "
        f"{platform.node()}: Linux {platform.release()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}"
        + (f", {b.podman.version()} (runc)" if b.podman else "")
        + f"; {b.runs} rounds after {b.warmup} warm-up unless the table says otherwise; "
        f"whole run {elapsed / 60:.1f} min.",
        "",
        f"Reproduce: `{COMMAND}` (as root it runs as the user sbtest; "
        f"`python benchmarks/bench.py` as any user).",
        "",
        "| # | scenario | medians | ratio | goal | runs |",
        "|---|---|---|---|---|---|",
    ]
    for row in b.rows:
        figures = "<br>".join(f"{tool} {_num(v)} {row.unit}" for tool, v in row.figures.items())
        ratio = row.ratio()
        ratio_text = (
            f"{row.ratio_of[0]}/{row.ratio_of[1]} {ratio:.2f}"
            if ratio is not None and row.ratio_of
            else ""
        )
        goal = f"{row.goal} {row.verdict()}".strip()
        lines.append(
            f"| {row.scenario} | {row.what} | {figures} | {ratio_text} | {goal} | {row.runs} |"
        )
    if b.skipped:
        lines += ["", "Not measured in this run:", ""]
        lines += [f"- scenario {s}: {reason}" for s, reason in b.skipped]
    lines += ["", END]
    return "\n".join(lines)


def write_results(path: Path, block: str) -> None:
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def handover(args: list[str], dest: Path = DOC) -> int:
    """As root: run this script as the bench user, then copy its results into dest (the doc,
    or the file --results names)."""
    user = os.environ.get("SANDBOX_BENCH_USER", "sbtest")
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        print(f"error: no user {user}; scripts/test.sh creates it (or set SANDBOX_BENCH_USER)")
        return 125
    results = Path(tempfile.mkdtemp(prefix="sandbox-bench-")) / "benchmarks.md"
    os.chown(results.parent, entry.pw_uid, entry.pw_gid)
    if dest.exists():
        shutil.copyfile(dest, results)
        os.chown(results, entry.pw_uid, entry.pw_gid)
    env = [
        f"HOME={entry.pw_dir}",
        f"USER={user}",
        f"LOGNAME={user}",
        "PATH=/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
        "LANG=C.UTF-8",
    ]
    if "SANDBOX_TEST_DEBIAN_TARBALL" in os.environ:
        env.append(f"SANDBOX_TEST_DEBIAN_TARBALL={os.environ['SANDBOX_TEST_DEBIAN_TARBALL']}")
    # An installed package has its bytecode compiled; a root-owned tree the bench user cannot
    # write would otherwise be recompiled from source on every run (about 60 ms each).
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(REPO / "sandbox"), str(REPO / "benchmarks")],
        check=False,
    )
    argv = ["runuser", "-u", user, "--", "env", "-i", *env, sys.executable]
    argv += [str(Path(__file__).resolve()), *args, "--results", str(results)]
    print(f"running as {user}: {' '.join(argv)}", flush=True)
    code = subprocess.run(argv, cwd="/").returncode
    text = results.read_text() if results.exists() else ""
    if code == 0 and BEGIN in text and END in text:
        # Only the block: the rest of the doc may have been edited while the bench ran.
        block = BEGIN + text.split(BEGIN, 1)[1].split(END, 1)[0] + END
        write_results(dest, block)
        print(f"results written to {dest}")
    shutil.rmtree(results.parent, ignore_errors=True)
    return code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke test)")
    parser.add_argument("--only", default="1,2,3,4,5,6,7", help="scenarios to run, e.g. 1,6")
    parser.add_argument("--results", type=Path, default=DOC, help="markdown file to update")
    parser.add_argument(
        "--work",
        type=Path,
        default=Path.home() / ".cache" / "sandbox-bench",
        help="private directory for the engines' storage (emptied first)",
    )
    args = parser.parse_args()
    if os.geteuid() == 0:
        return handover(sys.argv[1:], args.results)
    only = {s.strip() for s in args.only.split(",")}
    if not (REPO / "sandbox" / "__pycache__").is_dir() and not os.access(REPO / "sandbox", os.W_OK):
        print("note: sandbox's bytecode cannot be written here; run as root or compileall first")
    work: Path = args.work
    started = time.monotonic()
    if work.exists():
        tools.remove_tree(Sandbox(work, tools.python_env(work, INSTALLED)), work)
    work.mkdir(parents=True)
    try:
        b, images = prepare(work, args.quick)
        busybox_rootfs = images["busybox"][1]
        steps: list[tuple[str, str, Callable[[], None]]] = [
            ("1", "run --rm IMAGE true", lambda: scenario_run(b, images)),
            ("2", "--version against a bare typer app", lambda: scenario_version(b)),
            (
                "3",
                "pull from a local registry",
                lambda: scenario_pull(b, images.get("debian", (None,))[0]),
            ),
            ("4", "TCP throughput (iperf3)", lambda: scenario_throughput(b)),
            ("5", "helpers' memory, idle detached container", lambda: scenario_memory(b)),
            ("6", "exec latency", lambda: scenario_exec(b)),
            ("7", "20 containers in parallel", lambda: scenario_parallel(b, busybox_rootfs)),
        ]
        for number, title, step in steps:
            if number not in only:
                continue
            print(f"\n[{number}] {title}", flush=True)
            try:
                step()
            except BenchError as e:
                b.skip(number, f"failed: {e}")
        print("\nsummary")
        for row in b.rows:
            print("  " + _format_row(row))
        for scenario, reason in b.skipped:
            print(f"  scenario {scenario} not measured: {reason}")
        block = markdown(b, time.monotonic() - started)
        try:
            write_results(args.results, block)
            print(f"\nresults written to {args.results}")
        except OSError as e:
            fallback = work / "benchmarks.md"
            write_results(fallback, block)
            print(f"\ncould not write {args.results} ({e.strerror}); results in {fallback}")
    finally:
        Podman(work, {}).stop_pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())
