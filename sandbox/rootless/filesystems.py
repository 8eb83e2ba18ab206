"""The file system that holds a path, named for errors: a full disk (ENOSPC) or an exhausted
quota (EDQUOT) is reported with the device, its mount point and what is left on it, so the
user knows which disk to clean up. Imported only on those error paths.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import TypeGuard

FULL = (errno.ENOSPC, errno.EDQUOT)


def is_full(error: BaseException) -> TypeGuard[OSError]:
    """Whether error is the kernel saying the file system (or the user's quota) is full."""
    return isinstance(error, OSError) and error.errno in FULL


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal (\040 ...).
    import re

    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_of(path: Path, mountinfo: str | None = None) -> tuple[str, str, str] | None:
    """(source device, mount point, file system type) of the mount that holds path, matched
    by st_dev in /proc/self/mountinfo (the deepest such mount point above path); None when
    path or mountinfo cannot be read."""
    try:
        st = os.stat(_existing(path))
        if mountinfo is None:
            with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
                mountinfo = f.read()
    except OSError:
        return None
    wanted = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    best: tuple[str, str, str] | None = None
    resolved = str(_existing(path).resolve())
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 10 or fields[2] != wanted or "-" not in fields[6:]:
            continue
        mount_point = _unescape(fields[4])
        inside = resolved == mount_point or resolved.startswith(mount_point.rstrip("/") + "/")
        if not inside:
            continue
        rest = fields[fields.index("-", 6) + 1 :]
        if len(rest) < 2:
            continue
        if best is None or len(mount_point) > len(best[1]):
            best = (_unescape(rest[1]), mount_point, rest[0])
    return best


def _existing(path: Path) -> Path:
    """path, or its nearest ancestor that exists (what failed may not have been created)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def describe(path: Path) -> str:
    """'/dev/vdb (ext4 on /mnt/small, 12 KiB free)', or path itself when nothing is known."""
    found = mount_of(path)
    if found is None:
        return f"the file system holding {path}"
    source, mount_point, fstype = found
    free = ""
    try:
        vfs = os.statvfs(mount_point)
        free = f", {_size(vfs.f_bavail * vfs.f_frsize)} free"
    except OSError:
        pass
    return f"{source} ({fstype} on {mount_point}{free})"


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    value, units = n / 1024, ["KiB", "MiB", "GiB"]
    while value >= 1024 and len(units) > 1:
        value /= 1024
        units.pop(0)
    return f"{value:.1f} {units[0]}"


def full_message(error: OSError, path: Path) -> str:
    """'no space left on DEVICE (...)' or 'disk quota exceeded on DEVICE (...)'."""
    what = "disk quota exceeded on" if error.errno == errno.EDQUOT else "no space left on"
    return f"{what} {describe(path)}"
