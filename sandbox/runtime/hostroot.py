"""The `host` image: a container whose root is the host's own system, read-only.

`sandbox run host CMD` needs no image and no store: the root is a fresh tmpfs holding
read-only binds of the host's /usr, /etc and the /bin, /sbin and /lib* directories (or the
same symlinks, on a merged-/usr system), plus empty /tmp, /home, /root, /run and /var/tmp.
So a host tool runs with its own libraries but sees none of the user's files, and whatever it
writes is gone when it exits. Runs as PID 1 of the container (runtime/init.py, step 5).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from sandbox.rootless import mounts, syscalls
from sandbox.rootless.mounts import Mount

IMAGE = "host"
# Bound read-only from the host when they exist (a symlink is recreated as one).
HOST_DIRS = ("usr", "etc", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "opt")
# Fresh, writable, on the tmpfs root.
EMPTY_DIRS = (
    ("tmp", 0o1777),
    ("var/tmp", 0o1777),
    ("home", 0o755),
    ("root", 0o700),
    ("run", 0o755),
    ("var", 0o755),
)
_BIND = ("rbind", "ro", "nosuid", "nodev")


def mount(path: Path, host: Path = Path("/")) -> None:
    """Build the root at path (an empty directory): tmpfs, then the binds into it."""
    syscalls.mount("tmpfs", str(path), "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV, "mode=755")
    for name, mode in EMPTY_DIRS:
        (path / name).mkdir(parents=True, exist_ok=True)
        os.chmod(path / name, mode)
    root_fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in HOST_DIRS:
            source = host / name
            if source.is_symlink():
                # Merged /usr: /bin -> usr/bin; the same link, resolved inside the root.
                os.symlink(os.readlink(source), path / name)
            elif source.is_dir():
                mounts.mount_at(root_fd, Mount(f"/{name}", "bind", str(source), _BIND))
    finally:
        with contextlib.suppress(OSError):
            os.close(root_fd)
