"""Resource limits: what `--memory`, `--cpus`, `--pids-limit`... ask for, and the cgroup v2
files and controllers that enforce them.

Parsing follows podman's units and conversions (crun's for cpu-shares and blkio-weight), so a
command line copied from podman means the same here. Nothing here touches a cgroup.
"""

from __future__ import annotations

import dataclasses
import re

from sandbox.errors import UsageError

CPU_PERIOD = 100_000  # microseconds; cpu.max's default period
_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([bkmgt]?)b?$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_CPUSET_RE = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


@dataclasses.dataclass(frozen=True)
class Limit:
    """One requested limit: the option that asked, the cgroup file, its value, its controller."""

    option: str
    file: str
    value: str
    controller: str


@dataclasses.dataclass(frozen=True)
class Resources:
    """Limits as cgroup v2 understands them; None means "not asked for"."""

    memory: int | None = None  # bytes -> memory.max
    memory_swap: int | None = None  # memory + swap, bytes, -1 unlimited (podman's meaning)
    memory_reservation: int | None = None  # bytes -> memory.low
    cpu_quota: int | None = None  # microseconds per CPU_PERIOD -> cpu.max
    cpu_weight: int | None = None  # 1..10000 -> cpu.weight
    cpuset_cpus: str | None = None  # "0-2,4" -> cpuset.cpus
    pids_limit: int | None = None  # -> pids.max (0 or -1: unlimited)
    io_weight: int | None = None  # 1..10000 -> io.weight

    @property
    def empty(self) -> bool:
        return not self.limits()

    def limits(self) -> list[Limit]:
        """Every requested limit, in a stable order."""
        out: list[Limit] = []
        if self.memory is not None:
            out.append(Limit("--memory", "memory.max", str(self.memory), "memory"))
        if self.memory_swap is not None:
            if self.memory_swap < 0:
                swap = "max"
            else:
                swap = str(max(self.memory_swap - (self.memory or 0), 0))
            out.append(Limit("--memory-swap", "memory.swap.max", swap, "memory"))
        if self.memory_reservation is not None:
            out.append(
                Limit("--memory-reservation", "memory.low", str(self.memory_reservation), "memory")
            )
        if self.cpu_quota is not None:
            out.append(Limit("--cpus", "cpu.max", f"{self.cpu_quota} {CPU_PERIOD}", "cpu"))
        if self.cpu_weight is not None:
            out.append(Limit("--cpu-weight", "cpu.weight", str(self.cpu_weight), "cpu"))
        if self.cpuset_cpus is not None:
            out.append(Limit("--cpuset-cpus", "cpuset.cpus", self.cpuset_cpus, "cpuset"))
        if self.pids_limit is not None:
            value = "max" if self.pids_limit <= 0 else str(self.pids_limit)
            out.append(Limit("--pids-limit", "pids.max", value, "pids"))
        if self.io_weight is not None:
            out.append(Limit("--blkio-weight", "io.weight", f"default {self.io_weight}", "io"))
        return out

    def controllers(self) -> list[str]:
        """The controllers the limits need, each once, in order."""
        return list(dict.fromkeys(limit.controller for limit in self.limits()))

    def options(self) -> str:
        """The options that asked for limits, for messages: "--memory, --pids-limit"."""
        return ", ".join(dict.fromkeys(limit.option for limit in self.limits()))


NO_LIMITS = Resources()


def parse_size(option: str, text: str) -> int:
    """podman's sizes: 64m, 1g, 512k, 100000 (bytes); b/k/m/g/t, case-insensitive."""
    match = _SIZE_RE.match(text.strip())
    if not match:
        raise UsageError(
            f"invalid {option} {text!r}", hint="give a size such as 64m, 512k or 2g (bytes if bare)"
        )
    number, unit = match.groups()
    return int(float(number) * _UNITS[unit.lower()])


def from_options(
    *,
    memory: str | None = None,
    memory_swap: str | None = None,
    memory_reservation: str | None = None,
    cpus: str | None = None,
    cpu_shares: int | None = None,
    cpu_weight: int | None = None,
    cpuset_cpus: str | None = None,
    pids_limit: int | None = None,
    blkio_weight: int | None = None,
) -> Resources:
    """Validate the command line's limits (UsageError naming the option) into Resources."""
    mem = parse_size("--memory", memory) if memory is not None else None
    if mem is not None and mem < 6 << 20:
        raise UsageError(f"--memory {memory} is too small", hint="the minimum is 6m, as in podman")
    swap: int | None = None
    if memory_swap is not None:
        if memory_swap.strip() == "-1":
            swap = -1
        else:
            swap = parse_size("--memory-swap", memory_swap)
            if mem is None:
                raise UsageError(
                    "--memory-swap needs --memory", hint="--memory-swap is memory plus swap"
                )
            if swap < mem:
                raise UsageError(
                    f"--memory-swap {memory_swap} is smaller than --memory {memory}",
                    hint="--memory-swap is memory plus swap; -1 means unlimited swap",
                )
    reservation = None
    if memory_reservation is not None:
        reservation = parse_size("--memory-reservation", memory_reservation)
    quota = None
    if cpus is not None:
        try:
            value = float(cpus)
        except ValueError:
            value = -1.0
        if not value > 0 or value > 1024:
            raise UsageError(f"invalid --cpus {cpus!r}", hint="a number of CPUs such as 0.5 or 2")
        quota = max(int(value * CPU_PERIOD), 1000)
    if cpu_shares is not None and cpu_weight is not None:
        raise UsageError(
            "--cpu-shares and --cpu-weight both set the CPU weight", hint="give only one"
        )
    weight = None
    if cpu_shares is not None:
        if not 2 <= cpu_shares <= 262144:
            raise UsageError(f"invalid --cpu-shares {cpu_shares}", hint="between 2 and 262144")
        # crun's conversion from cgroup v1 shares (2..262144) to v2 weight (1..10000).
        weight = 1 + ((cpu_shares - 2) * 9999) // 262142
    if cpu_weight is not None:
        if not 1 <= cpu_weight <= 10000:
            raise UsageError(f"invalid --cpu-weight {cpu_weight}", hint="between 1 and 10000")
        weight = cpu_weight
    if cpuset_cpus is not None and not _CPUSET_RE.match(cpuset_cpus):
        raise UsageError(f"invalid --cpuset-cpus {cpuset_cpus!r}", hint="a list such as 0-2,4")
    io = None
    if blkio_weight is not None:
        if not 10 <= blkio_weight <= 1000:
            raise UsageError(f"invalid --blkio-weight {blkio_weight}", hint="between 10 and 1000")
        # crun's conversion from blkio.weight (10..1000) to io.weight (1..10000).
        io = 1 + ((blkio_weight - 10) * 9999) // 990
    return Resources(
        memory=mem,
        memory_swap=swap,
        memory_reservation=reservation,
        cpu_quota=quota,
        cpu_weight=weight,
        cpuset_cpus=cpuset_cpus,
        pids_limit=pids_limit,
        io_weight=io,
    )


def cpuset_mask(cpus: str) -> bytes:
    """ "0-2,4" -> the little-endian CPU bitmask systemd's AllowedCPUs property takes."""
    bits: set[int] = set()
    for part in cpus.split(","):
        low, _, high = part.partition("-")
        bits.update(range(int(low), int(high or low) + 1))
    mask = bytearray((max(bits) // 8 + 1) if bits else 0)
    for bit in bits:
        mask[bit // 8] |= 1 << (bit % 8)
    return bytes(mask)
