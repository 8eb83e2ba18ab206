"""Shared pieces of the security suite: the static syscall probe and the host snapshot."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests import helpers

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def sysprobe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/security/sysprobe.c built static on the host (the container has no compiler)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        helpers.missing("gcc", "gcc and libc6-dev build the static syscall probe")
    out = tmp_path_factory.mktemp("sysprobe") / "sysprobe"
    done = subprocess.run(
        [gcc, "-static", "-O1", "-o", str(out), str(HERE / "sysprobe.c")],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        helpers.missing(
            "gcc", f"cannot build the static syscall probe: {done.stderr.strip()[:300]}"
        )
    out.parent.chmod(0o755)
    return out


def fingerprint(path: Path) -> tuple[int, int, str]:
    """(mode, mtime, sha256) of a host file: what an escape would change."""
    st = os.stat(path)
    return st.st_mode, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()
