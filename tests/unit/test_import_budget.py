"""The start path stays lean: a budget on the modules `sandbox run` imports (counted, not timed).

Each check runs a fresh interpreter (pytest has already imported half the world) and counts the
modules it imports beyond the bare interpreter's own start-up. The budgets were set from the
counts measured when this test was written (in the comments), with a margin for small
additions; a new eager import of a heavy library fails the named-module check at once.
Raise a budget only when the run path really needs the new modules, and say why in the commit.
What a real `sandbox run` and `sandbox exec` import (lazy imports included) is counted by
tests/integration/test_start_path.py.
"""

from __future__ import annotations

import subprocess
import sys

# Never on the container start path unless that run needs them (they load lazily where used).
HEAVY = (
    "rich",
    "yaml",
    "httpx",
    "pyroute2",
    "jeepney",
    "pydantic",
    "http.client",
    "ssl",
    "asyncio",
    "concurrent.futures",
    "zstandard",
    "hashlib",  # loads OpenSSL: only where blobs are hashed
    "secrets",
    "tempfile",
)

# The CLI and the engine modules a plain `sandbox run IMAGE CMD` (no pull) goes through.
RUN_PATH = (
    "sandbox.cli.main",
    "sandbox.cli.run",
    "sandbox.config",
    "sandbox.spec",
    "sandbox.images.store",
    "sandbox.runtime.container",
    "sandbox.runtime.init",
)

BUDGET_RUN_HELP = 88  # measured 84 (103 before the CLI built only the command asked for)
# measured 128 (140 before hashlib, secrets and tempfile left the path, 132 before tty and
# termios did)
BUDGET_RUN_PATH = 132


def _imported(*args: str) -> list[str]:
    """Module names a fresh `python -X importtime ARGS...` imports, in order."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    names = []
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":  # the header line
                names.append(name)
    return names


def _beyond_interpreter(*args: str) -> list[str]:
    baseline = set(_imported("-c", "pass"))
    return [name for name in _imported(*args) if name not in baseline]


def _heavy(names: list[str]) -> list[str]:
    return [n for n in names if n in HEAVY or n.split(".")[0] in HEAVY]


def test_run_help_stays_within_its_import_budget() -> None:
    names = _beyond_interpreter("-m", "sandbox", "run", "--help")
    assert "typer" in names  # the count is real: the CLI was imported
    assert _heavy(names) == []
    assert len(names) <= BUDGET_RUN_HELP, (
        f"`sandbox run --help` imports {len(names)} modules (budget {BUDGET_RUN_HELP}); "
        "the last ones: " + ", ".join(names[-30:])
    )


def test_run_path_imports_no_heavy_library() -> None:
    names = _beyond_interpreter("-c", "import " + ", ".join(RUN_PATH))
    assert "sandbox.runtime.container" in names
    assert _heavy(names) == []
    assert len(names) <= BUDGET_RUN_PATH, (
        f"the run path imports {len(names)} modules (budget {BUDGET_RUN_PATH}): "
        + ", ".join(names[-30:])
    )
