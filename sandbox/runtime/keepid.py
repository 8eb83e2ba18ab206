"""--userns=keep-id's identity: the user's own passwd and group entries inside the container.

The container's /etc/passwd and /etc/group are the image's with one entry added for the user
(host name, uid, gid and home), written next to the container's other /etc files and
bind-mounted over the image's (spec.etc_files). The image's files are read from the host
side, so they are treated as hostile: each layer directory is opened and the file resolved
with openat2(RESOLVE_IN_ROOT), so a symlink the image planted stays inside that layer, and at
most users.MAX_FILE bytes are read from a regular file.
"""

from __future__ import annotations

import dataclasses
import grp
import os
import pwd
import stat
from pathlib import Path

from sandbox.errors import ContainerError, HostError
from sandbox.rootless import syscalls
from sandbox.runtime.users import MAX_FILE

FILES = ("passwd", "group")
SHELL = "/bin/sh"


@dataclasses.dataclass(frozen=True)
class Identity:
    name: str
    uid: int
    gid: int
    group: str
    home: str


def host_identity() -> Identity:
    """The calling user as the host knows them (the host's NSS is ours to trust)."""
    uid, gid = os.getuid(), os.getgid()
    try:
        entry = pwd.getpwuid(uid)
        name, home = entry.pw_name, entry.pw_dir or "/"
    except KeyError:
        name, home = f"user{uid}", "/"
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = name
    for value in (name, home, group):
        if ":" in value or "\n" in value or not value:
            raise HostError(
                f"cannot use {value!r} in the container's /etc/passwd",
                hint="--userns=keep-id needs a user name and home without ':' or newlines",
            )
    if not home.startswith("/"):
        home = "/"
    return Identity(name, uid, gid, group, home)


def read_image_file(layers: list[Path], name: str) -> str:
    """/etc/NAME as the container will see it: from the top-most layer that has it.

    layers: top-most first (the overlay's upper, then the lowers from the top). A whiteout
    (character device) means the file was deleted: empty.
    """
    for layer in layers:
        try:
            layer_fd = os.open(layer, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            # O_NONBLOCK: a FIFO planted at /etc/passwd must not hang us.
            fd = syscalls.openat2(layer_fd, f"etc/{name}", os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            continue
        except OSError:
            # A symlink loop, /etc a file, a whiteout (char 0/0 opens as ENXIO/ENODEV): this
            # layer hides the file and has none we can use.
            return ""
        finally:
            os.close(layer_fd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return ""
            data = os.read(fd, MAX_FILE + 1)
        finally:
            os.close(fd)
        if len(data) > MAX_FILE:
            raise ContainerError(
                f"the image's /etc/{name} is larger than {MAX_FILE} bytes",
                hint="--userns=keep-id reads it to add your entry; use another image",
            )
        return data.decode("utf-8", "replace")
    return ""


def passwd(image_text: str, who: Identity) -> str:
    """The image's passwd without entries for the user's name or uid, plus the user's."""
    kept = [line for line in image_text.splitlines() if not _matches(line, who.name, str(who.uid))]
    kept.append(f"{who.name}:x:{who.uid}:{who.gid}:{who.name}:{who.home}:{SHELL}")
    return "\n".join(kept) + "\n"


def group(image_text: str, who: Identity) -> str:
    """The image's group file; the user's group added when the image has no group with its id
    (a group of that name but another id is left alone and ours is named after the user)."""
    lines = image_text.splitlines()
    gids = {line.split(":")[2] for line in lines if line.count(":") >= 3}
    if str(who.gid) not in gids:
        names = {line.split(":")[0] for line in lines}
        name = who.group if who.group not in names else who.name
        if name in names:
            name = f"{who.name}{who.gid}"
        lines.append(f"{name}:x:{who.gid}:")
    return "\n".join(lines) + "\n"


def _matches(line: str, name: str, uid: str) -> bool:
    fields = line.split(":")
    return len(fields) >= 3 and (fields[0] == name or fields[2] == uid)


def write(etc_dir: Path, layers: list[Path], who: Identity) -> None:
    """Write etc_dir/passwd and etc_dir/group for the container."""
    (etc_dir / "passwd").write_text(passwd(read_image_file(layers, "passwd"), who))
    (etc_dir / "group").write_text(group(read_image_file(layers, "group"), who))
