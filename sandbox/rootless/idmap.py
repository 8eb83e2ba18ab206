"""User and group id mappings: subordinate ranges, and writing a process's uid_map/gid_map.

A rootless container maps id 0 to the user's own uid and ids 1..N to the user's subordinate
range from /etc/subuid and /etc/subgid (as podman does). Writing a mapping of more than one id
needs the setuid helpers newuidmap/newgidmap; without subordinate ids we fall back to mapping
only the user's own id, which any process may write for itself.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import shutil
import subprocess
from pathlib import Path

from sandbox.errors import HostError

SUBUID = Path("/etc/subuid")
SUBGID = Path("/etc/subgid")


@dataclasses.dataclass(frozen=True)
class IdRange:
    """A line of /proc/PID/uid_map: ids [inside, inside+size) are host ids [outside, ...)."""

    inside: int
    outside: int
    size: int


@dataclasses.dataclass(frozen=True)
class IdMapping:
    uids: tuple[IdRange, ...]
    gids: tuple[IdRange, ...]
    # Why a single mapping was used (None when the subordinate ranges are mapped).
    single_reason: str | None = None

    @property
    def single(self) -> bool:
        return self.single_reason is not None

    def host_uid(self, uid: int) -> int | None:
        return _to_host(self.uids, uid)

    def host_gid(self, gid: int) -> int | None:
        return _to_host(self.gids, gid)

    @property
    def uid_count(self) -> int:
        return sum(r.size for r in self.uids)

    @property
    def gid_count(self) -> int:
        return sum(r.size for r in self.gids)


def _to_host(ranges: tuple[IdRange, ...], inside: int) -> int | None:
    for r in ranges:
        if r.inside <= inside < r.inside + r.size:
            return r.outside + inside - r.inside
    return None


def read_subids(path: Path, user: str, uid: int) -> list[tuple[int, int]]:
    """The (start, count) ranges path grants to user (by name or by numeric uid)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise HostError(f"cannot read {path}", context=e.strerror) from e
    ranges = []
    for line in text.splitlines():
        fields = line.strip().split(":")
        if len(fields) != 3 or fields[0].startswith("#"):
            continue
        if fields[0] not in (user, str(uid)):
            continue
        try:
            start, count = int(fields[1]), int(fields[2])
        except ValueError:
            continue
        if count > 0 and start >= 0:
            ranges.append((start, count))
    return ranges


def current_user() -> tuple[str, int, int]:
    uid, gid = os.getuid(), os.getgid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    return name, uid, gid


def for_current_user(mode: str = "auto") -> IdMapping:
    """The mapping a container of the current user gets.

    mode "subids" requires subordinate ranges, "single" maps only the user's own ids, "auto"
    uses the ranges when they and newuidmap/newgidmap exist and falls back to single otherwise.
    "keep-id" is "subids" here: this is the storage's mapping (layers are unpacked with it);
    keep_id() derives a keep-id container's mapping from it.
    """
    if mode == "keep-id":
        mode = "subids"
    name, uid, gid = current_user()
    single = (IdRange(0, uid, 1),), (IdRange(0, gid, 1),)
    if mode == "single":
        return IdMapping(
            *single, single_reason="a single-id mapping was requested (userns: single)"
        )
    subuids = read_subids(SUBUID, name, uid) or _from_getsubids(name, gids=False)
    subgids = read_subids(SUBGID, name, uid) or _from_getsubids(name, gids=True)
    reason = None
    if not subuids:
        reason = (
            f"no subordinate uids for {name} in {SUBUID}; add '{name}:100000:65536' "
            f"(or run 'usermod --add-subuids 100000-165535 {name}' as root)"
        )
    elif not subgids:
        reason = (
            f"no subordinate gids for {name} in {SUBGID}; add '{name}:100000:65536' "
            f"(or run 'usermod --add-subgids 100000-165535 {name}' as root)"
        )
    else:
        for helper in ("newuidmap", "newgidmap"):
            if shutil.which(helper) is None:
                reason = f"{helper} is not installed; install the 'uidmap' package"
                break
    if reason is not None:
        if mode == "subids":
            raise HostError("cannot map subordinate ids", context=reason)
        return IdMapping(*single, single_reason=reason)
    return IdMapping(_ranges(uid, subuids), _ranges(gid, subgids))


def _from_getsubids(user: str, *, gids: bool) -> list[tuple[int, int]]:
    """Ranges from shadow's getsubids, which also asks the subid NSS source (LDAP, SSSD):
    consulted only when /etc/subuid or /etc/subgid has nothing, so most runs spawn nothing."""
    tool = shutil.which("getsubids")
    if tool is None:
        return []
    try:
        done = subprocess.run(
            [tool, *(["-g"] if gids else []), user],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    ranges = []
    for line in done.stdout.splitlines():  # "0: alice 100000 65536"
        fields = line.split()
        if len(fields) == 4 and fields[2].isdigit() and fields[3].isdigit():
            ranges.append((int(fields[2]), int(fields[3])))
    return ranges


def keep_id(base: IdMapping) -> IdMapping:
    """podman's --userns=keep-id: the user's own uid/gid are the same ids inside.

    Container ids 0..uid-1 map to the first subordinate ids, uid to the user's host uid, and
    uid+1.. to the rest of the subordinate ranges: the same host ids as base, in another order.
    """
    if base.single:
        raise HostError("--userns=keep-id needs subordinate ids", context=base.single_reason or "")
    _name, uid, gid = current_user()
    return IdMapping(_keep(base.uids, uid), _keep(base.gids, gid))


def _keep(ranges: tuple[IdRange, ...], own: int) -> tuple[IdRange, ...]:
    kept = [IdRange(own, own, 1)]
    inside = 0
    # The base mapping is (0 -> own, 1) followed by the subordinate ranges.
    for r in (r for r in ranges if r.inside > 0):
        outside, left = r.outside, r.size
        while left:
            if inside == own:
                inside += 1  # the user's own id is taken by the user
            size = left if inside > own else min(left, own - inside)
            kept.append(IdRange(inside, outside, size))
            inside, outside, left = inside + size, outside + size, left - size
    return tuple(sorted(kept, key=lambda r: r.inside))


def _ranges(own: int, subids: list[tuple[int, int]]) -> tuple[IdRange, ...]:
    ranges = [IdRange(0, own, 1)]
    inside = 1
    for start, count in subids:
        ranges.append(IdRange(inside, start, count))
        inside += count
    return tuple(ranges)


def write_mapping(pid: int, mapping: IdMapping) -> None:
    """Give process pid (just after its unshare(CLONE_NEWUSER)) the mapping."""
    if mapping.single:
        _write_single(pid, mapping)
        return
    # The two helpers write different files of the process: they run side by side.
    running: list[tuple[str, subprocess.Popen[str]]] = []
    try:
        for helper, ranges in (("newuidmap", mapping.uids), ("newgidmap", mapping.gids)):
            args = [helper, str(pid)]
            for r in ranges:
                args += [str(r.inside), str(r.outside), str(r.size)]
            try:
                process = subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            except OSError as e:
                raise HostError(
                    f"cannot run {helper}", context=e.strerror, hint="install the 'uidmap' package"
                ) from e
            running.append((helper, process))
    finally:
        results = [(helper, process, process.communicate()[1]) for helper, process in running]
    for helper, process, stderr in results:
        if process.returncode != 0:
            raise HostError(
                f"{helper} refused the mapping for process {pid}",
                context=stderr.strip() or f"exit status {process.returncode}",
                hint=f"check that {helper} is setuid root "
                f"and that {SUBUID} and {SUBGID} grant these ranges",
            )


def _write_single(pid: int, mapping: IdMapping) -> None:
    # setgroups must be denied before an unprivileged process may write gid_map.
    proc = Path(f"/proc/{pid}")
    try:
        (proc / "setgroups").write_text("deny")
        (proc / "uid_map").write_text(_lines(mapping.uids))
        (proc / "gid_map").write_text(_lines(mapping.gids))
    except OSError as e:
        raise HostError(f"cannot write the id mapping of process {pid}", context=e.strerror) from e


def _lines(ranges: tuple[IdRange, ...]) -> str:
    return "".join(f"{r.inside} {r.outside} {r.size}\n" for r in ranges)
