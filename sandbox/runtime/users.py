"""Resolve a container's user ("alice", "1000:1000", "app:staff") from its own files.

We parse /etc/passwd and /etc/group text ourselves. Calling getpwnam() would load NSS modules
named by the image's /etc/nsswitch.conf into our process: code from the image running in the
engine. The caller reads the files from inside the container's root (after pivot_root), so
the image's symlinks cannot point us at the host's files either.
"""

from __future__ import annotations

import dataclasses

from sandbox.errors import ContainerError

MAX_FILE = 4 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class User:
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    name: str | None


def _records(text: str, fields: int) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) >= fields:
            rows.append(parts)
    return rows


def resolve(spec: str, passwd: str, group: str) -> User:
    """Resolve USER[:GROUP] where each part is a name or a number, as podman does."""
    user_part, _, group_part = spec.partition(":")
    users = _records(passwd, 7)
    groups = _records(group, 4)
    entry = None
    if user_part.isdigit():
        uid = int(user_part)
        entry = next((u for u in users if u[2] == user_part), None)
    else:
        entry = next((u for u in users if u[0] == user_part), None)
        if entry is None:
            raise ContainerError(
                f"unable to find user {user_part}",
                context="no matching entries in the container's /etc/passwd",
            )
        uid = _number(entry[2], "uid", user_part)
    name = entry[0] if entry else None
    home = entry[5] if entry and entry[5] else "/"
    if group_part:
        if group_part.isdigit():
            gid = int(group_part)
        else:
            found = next((g for g in groups if g[0] == group_part), None)
            if found is None:
                raise ContainerError(
                    f"unable to find group {group_part}",
                    context="no matching entries in the container's /etc/group",
                )
            gid = _number(found[2], "gid", group_part)
    else:
        gid = _number(entry[3], "gid", user_part) if entry else 0
    extra: list[int] = []
    if name is not None and not group_part:
        for g in groups:
            members = g[3].split(",") if g[3] else []
            if name in members and g[2].isdigit() and int(g[2]) != gid:
                extra.append(int(g[2]))
    return User(uid=uid, gid=gid, groups=tuple(dict.fromkeys(extra)), home=home, name=name)


def _number(text: str, what: str, who: str) -> int:
    if not text.isdigit():
        raise ContainerError(f"invalid {what} {text!r} for {who} in the container's files")
    return int(text)


def read_small(path: str) -> str:
    """A config file of the container, bounded in size; missing reads as empty."""
    try:
        with open(path, "rb") as f:
            return f.read(MAX_FILE).decode("utf-8", "replace")
    except OSError:
        return ""
