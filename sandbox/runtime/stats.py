"""Resource usage of running containers, read from their cgroups (and /proc for network I/O).

One sample per container: CPU time (cpu.stat usage_usec), memory (memory.current, memory.max),
pids (pids.current), block I/O (io.stat rbytes/wbytes) and network I/O (PID 1's
/proc/PID/net/dev, less loopback). CPU % is the CPU time used between two samples over the
wall time between them, as podman and docker compute it.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from sandbox.runtime.state import Container


@dataclasses.dataclass(frozen=True)
class Sample:
    id: str
    name: str
    taken: float  # time.monotonic()
    cpu_usec: int
    memory: int
    memory_limit: int | None  # None: no limit
    pids: int
    block_read: int
    block_write: int
    net_rx: int
    net_tx: int

    def cpu_percent(self, before: Sample | None) -> float:
        if before is None or self.taken <= before.taken:
            return 0.0
        return 100.0 * (self.cpu_usec - before.cpu_usec) / 1e6 / (self.taken - before.taken)

    def as_json(self, before: Sample | None) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "cpu_percent": round(self.cpu_percent(before), 2),
            "mem_usage": self.memory,
            "mem_limit": self.memory_limit,
            "pids": self.pids,
            "block_input": self.block_read,
            "block_output": self.block_write,
            "net_input": self.net_rx,
            "net_output": self.net_tx,
        }


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        return 0


def _keyed(text: str, key: str) -> int:
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return _int(value)
    return 0


def sample(container: Container) -> Sample:
    cgroup = Path(container.cgroup_path) if container.cgroup_path else None
    cpu = memory = pids = rbytes = wbytes = 0
    limit: int | None = None
    if cgroup is not None:
        cpu = _keyed(_read(cgroup / "cpu.stat"), "usage_usec")
        memory = _int(_read(cgroup / "memory.current"))
        raw_limit = _read(cgroup / "memory.max").strip()
        limit = _int(raw_limit) if raw_limit and raw_limit != "max" else None
        pids = _int(_read(cgroup / "pids.current"))
        for line in _read(cgroup / "io.stat").splitlines():
            for field in line.split()[1:]:
                key, _, value = field.partition("=")
                if key == "rbytes":
                    rbytes += _int(value)
                elif key == "wbytes":
                    wbytes += _int(value)
    rx = tx = 0
    for line in _read(Path(f"/proc/{container.pid}/net/dev")).splitlines()[2:]:
        interface, _, counters = line.partition(":")
        fields = counters.split()
        if interface.strip() != "lo" and len(fields) >= 9:
            rx += _int(fields[0])
            tx += _int(fields[8])
    return Sample(
        container.id,
        container.name,
        time.monotonic(),
        cpu,
        memory,
        limit,
        pids,
        rbytes,
        wbytes,
        rx,
        tx,
    )
