"""Resource limits (setrlimit): `--ulimit NAME=SOFT[:HARD]` for every RLIMIT_*.

Names are podman's (nofile, nproc, core, ...), also accepted with an RLIMIT_ prefix; a value
is a number or -1 / "unlimited". A process in a user namespace can lower a hard limit but not
raise it above the one it inherited: that fails when the container starts, naming the limit.
"""

from __future__ import annotations

import dataclasses
import resource
from collections.abc import Iterable

from sandbox.errors import ContainerError, UsageError

NAMES: dict[str, int] = {
    "as": resource.RLIMIT_AS,
    "core": resource.RLIMIT_CORE,
    "cpu": resource.RLIMIT_CPU,
    "data": resource.RLIMIT_DATA,
    "fsize": resource.RLIMIT_FSIZE,
    "locks": 10,  # RLIMIT_LOCKS
    "memlock": resource.RLIMIT_MEMLOCK,
    "msgqueue": 12,  # RLIMIT_MSGQUEUE
    "nice": 13,  # RLIMIT_NICE
    "nofile": resource.RLIMIT_NOFILE,
    "nproc": resource.RLIMIT_NPROC,
    "rss": resource.RLIMIT_RSS,
    "rtprio": 14,  # RLIMIT_RTPRIO
    "rttime": 15,  # RLIMIT_RTTIME
    "sigpending": 11,  # RLIMIT_SIGPENDING
    "stack": resource.RLIMIT_STACK,
}
UNLIMITED = resource.RLIM_INFINITY


@dataclasses.dataclass(frozen=True)
class Rlimit:
    name: str  # a key of NAMES
    soft: int  # RLIM_INFINITY for unlimited
    hard: int


def _value(text: str, option: str) -> int:
    if text in ("-1", "unlimited"):
        return UNLIMITED
    if not text.isdigit():
        raise UsageError(
            f"invalid --ulimit {option!r}: {text!r} is not a number",
            hint="use NAME=SOFT[:HARD], e.g. --ulimit nofile=1024:2048 (-1 is unlimited)",
        )
    return int(text)


def parse(text: str) -> Rlimit:
    """'nofile=100:200' -> Rlimit('nofile', 100, 200); 'nproc=50' sets both to 50."""
    name, has_value, values = text.partition("=")
    key = name.strip().lower().removeprefix("rlimit_")
    if not has_value or key not in NAMES:
        raise UsageError(
            f"invalid --ulimit {text!r}",
            hint="use NAME=SOFT[:HARD] with NAME one of " + ", ".join(sorted(NAMES)),
        )
    soft_text, has_hard, hard_text = values.partition(":")
    soft = _value(soft_text, text)
    hard = _value(hard_text, text) if has_hard else soft
    if hard != UNLIMITED and (soft == UNLIMITED or soft > hard):
        raise UsageError(
            f"invalid --ulimit {text!r}: the soft limit is above the hard limit",
            hint="SOFT must not exceed HARD",
        )
    return Rlimit(key, soft, hard)


def parse_all(texts: Iterable[str]) -> tuple[Rlimit, ...]:
    """Later --ulimit options for the same name replace earlier ones."""
    by_name = {}
    for text in texts:
        limit = parse(text)
        by_name[limit.name] = limit
    return tuple(by_name.values())


def apply(limits: Iterable[Rlimit]) -> None:
    for limit in limits:
        try:
            resource.setrlimit(NAMES[limit.name], (limit.soft, limit.hard))
        except (OSError, ValueError) as e:
            current = resource.getrlimit(NAMES[limit.name])
            raise ContainerError(
                f"cannot set --ulimit {limit.name}={_show(limit.soft)}:{_show(limit.hard)}",
                context=f"{e}; the hard limit sandbox inherited is {_show(current[1])}",
                hint="a rootless container cannot raise a hard limit; raise it for your "
                "session (ulimit -H, /etc/security/limits.conf) or ask for less",
            ) from e


def _show(value: int) -> str:
    return "unlimited" if value == UNLIMITED else str(value)
