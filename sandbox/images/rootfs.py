"""The "vfs" root filesystem driver: a private copy of an image's layers, for kernels that
cannot mount overlay inside a user namespace.

Runs inside the container's user namespace (as its PID 1), so ownership copies exactly. Layers
are applied lowest first; an overlay whiteout (a 0:0 character device) deletes the path below
it, and a directory marked opaque (user.overlay.opaque=y) hides everything below it.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path

OPAQUE_XATTR = "user.overlay.opaque"
_DONE = ".sandbox-copy-complete"


def ensure_copy(layers: Sequence[Path], dest: Path) -> None:
    """Fill dest from the layers unless an earlier run completed the copy."""
    marker = dest.parent / _DONE
    if marker.exists():
        return
    if dest.exists():
        shutil.rmtree(dest)  # an interrupted copy: start over
    dest.mkdir(mode=0o755)
    for layer in layers:
        _apply(layer, dest)
    marker.touch()


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _apply(layer: Path, dest: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(layer):
        rel = os.path.relpath(dirpath, layer)
        target_dir = dest if rel == "." else dest / rel
        if rel != "." and _is_opaque(dirpath) and target_dir.is_dir():
            shutil.rmtree(target_dir)
        for name in [*dirnames, *filenames]:
            src = os.path.join(dirpath, name)
            dst = target_dir / name
            st = os.lstat(src)
            if _is_whiteout(st):
                _remove(dst)
                continue
            if stat.S_ISDIR(st.st_mode):
                if dst.is_symlink() or (dst.exists() and not dst.is_dir()):
                    _remove(dst)
                if not dst.exists():
                    dst.mkdir(mode=0o700)
                _copy_meta(src, dst, st)
                continue
            _remove(dst)
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(src), dst)
            elif stat.S_ISREG(st.st_mode):
                shutil.copyfile(src, dst, follow_symlinks=False)
            elif stat.S_ISFIFO(st.st_mode):
                os.mkfifo(dst)
            else:
                continue  # sockets and devices have no place in a rootfs copy
            _copy_meta(src, dst, st)
    # Directory times were disturbed by creating their children: set them last.
    for dirpath, _dirs, _files in os.walk(layer):
        rel = os.path.relpath(dirpath, layer)
        st = os.lstat(dirpath)
        os.utime(dest / rel, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _remove(path: Path) -> None:
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _copy_meta(src: str, dst: Path, st: os.stat_result) -> None:
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        # chmod after chown: chown clears setuid/setgid bits.
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    try:
        for name in os.listxattr(src, follow_symlinks=False):
            if name.startswith("user.overlay."):
                continue
            os.setxattr(
                dst, name, os.getxattr(src, name, follow_symlinks=False), follow_symlinks=False
            )
    except OSError:
        pass  # xattrs are best effort (security.* may be refused in a user namespace)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
