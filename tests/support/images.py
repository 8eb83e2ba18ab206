"""Test images the tests build themselves: a busybox rootfs tarball from busybox-static.

Standard library only, so scripts/quickstart.sh can run it with a bare interpreter:

    python3 tests/support/images.py busybox OUT.tar

The tarball is built with tarfile, which sets each entry's owner and mode directly: no root
needed, and etc/shadow really is 0:42 mode 0640 in the image (a non-root owner that the
container's id mapping must carry through).
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
MTIME = 1_700_000_000  # fixed, so the same busybox gives the same tarball

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUP = """\
root:x:0:
shadow:x:42:
nogroup:x:65534:
"""
SHADOW = """\
root:*:19000:0:99999:7:::
nobody:*:19000:0:99999:7:::
"""


class ImageUnavailable(Exception):
    """The host cannot provide this test image; the message says why and what to install."""


def is_static_elf(path: Path) -> bool:
    """True when path is an ELF executable with no program interpreter (statically linked)."""
    with path.open("rb") as f:
        header = f.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2:  # 64-bit only; enough for CI hosts
            return False
        order = "<" if header[5] == 1 else ">"
        phoff = struct.unpack_from(order + "Q", header, 32)[0]
        phentsize, phnum = struct.unpack_from(order + "HH", header, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    for i in range(phnum):
        (p_type,) = struct.unpack_from(order + "I", table, i * phentsize)
        if p_type == 3:  # PT_INTERP: needs a dynamic loader the rootfs would not have
            return False
    return True


def find_static_busybox(path: Path = BUSYBOX) -> Path:
    if not path.exists():
        found = shutil.which("busybox")
        if found is None:
            raise ImageUnavailable(f"{path} does not exist; install busybox-static")
        path = Path(found)
    path = path.resolve()
    if not is_static_elf(path):
        raise ImageUnavailable(
            f"{path} is not statically linked; install busybox-static "
            "(it replaces the dynamically linked busybox package)"
        )
    return path


def busybox_applets(busybox: Path) -> list[str]:
    done = subprocess.run(
        [str(busybox), "--list"], capture_output=True, text=True, check=True, timeout=30
    )
    return sorted({a for a in done.stdout.split() if a and "/" not in a and a != "busybox"})


def build_busybox_rootfs(dest: Path, busybox: Path | None = None) -> Path:
    """Write a busybox rootfs tarball to dest (uncompressed tar, numeric owners) and return it."""
    binary = find_static_busybox(busybox or BUSYBOX)
    applets = busybox_applets(binary)
    tmp = dest.with_name(dest.name + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:

        def entry(name: str, kind: bytes, mode: int, uid: int = 0, gid: int = 0) -> tarfile.TarInfo:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mode = mode
            info.uid, info.gid = uid, gid
            info.uname = info.gname = ""
            info.mtime = MTIME
            return info

        for name, mode in (
            ("bin", 0o755),
            ("dev", 0o755),
            ("etc", 0o755),
            ("home", 0o755),
            ("proc", 0o555),
            ("root", 0o700),
            ("sys", 0o555),
            ("tmp", 0o1777),
            ("usr", 0o755),
            ("usr/bin", 0o755),
            ("var", 0o755),
            ("var/tmp", 0o1777),
        ):
            tar.addfile(entry(name, tarfile.DIRTYPE, mode))
        data = binary.read_bytes()
        info = entry("bin/busybox", tarfile.REGTYPE, 0o755)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        for applet in applets:
            link = entry(f"bin/{applet}", tarfile.SYMTYPE, 0o777)
            link.linkname = "busybox"
            tar.addfile(link)
        env = entry("usr/bin/env", tarfile.SYMTYPE, 0o777)
        env.linkname = "../../bin/busybox"
        tar.addfile(env)
        for name, text, mode, gid in (
            ("etc/passwd", PASSWD, 0o644, 0),
            ("etc/group", GROUP, 0o644, 0),
            ("etc/shadow", SHADOW, 0o640, 42),
        ):
            raw = text.encode()
            info = entry(name, tarfile.REGTYPE, mode, gid=gid)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    os.replace(tmp, dest)
    return dest


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "busybox":
        print("usage: images.py busybox OUT.tar", file=sys.stderr)
        return 2
    try:
        out = build_busybox_rootfs(Path(argv[1]))
    except ImageUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
