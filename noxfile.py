"""nox sessions: lint, typecheck, tests, rootless.

The usual way in is `bash scripts/test.sh`, which prepares the machine when run as root and
then runs `nox --no-venv -s lint typecheck tests` as an unprivileged user inside the project's
.venv (no second environment). Run on its own, nox builds one venv per session with the
interpreter that runs it, as usual. Arguments after `--` go to pytest.

Container tests need an unprivileged user: as root, `tests` refuses and `rootless` hands over
to scripts/test.sh, which runs them as the test user.
"""

from __future__ import annotations

import os

import nox
import nox.command

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True

IS_ROOT = os.geteuid() == 0
ROOT_MESSAGE = (
    "the tests must run as an unprivileged user (rootless is the product): as root, run "
    "'bash scripts/test.sh', which prepares this machine and runs them as the user sbtest"
)


def _install(session: nox.Session) -> None:
    """Install the project with its dev extras, unless running in an existing env (--no-venv)."""
    if session.venv_backend != "none":
        session.install("-e", ".[dev]")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the whole tree."""
    _install(session)
    failed = []
    # Both checks run, so one report shows every problem.
    for command in (("ruff", "check", "."), ("ruff", "format", "--check", ".")):
        try:
            session.run(*command)
        except nox.command.CommandFailed:
            failed.append(" ".join(command))
    if failed:
        session.error("failed: " + ", ".join(f"`{c}`" for c in failed))


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the sandbox package and the benchmarks."""
    _install(session)
    session.run("mypy", "--strict", "sandbox", "benchmarks")


@nox.session(venv_backend="none" if IS_ROOT else None)
def tests(session: nox.Session) -> None:
    """The whole pytest suite: unit, kernel and integration tests (as an unprivileged user)."""
    if IS_ROOT:
        session.error(ROOT_MESSAGE)
    _install(session)
    # -ra lists every skip with its reason: a skipped namespace test must be seen.
    session.run("pytest", "-ra", *session.posargs)


@nox.session(venv_backend="none" if IS_ROOT else None)
def rootless(session: nox.Session) -> None:
    """Only the container tests (kernel and integration); as root, run as the test user."""
    if IS_ROOT:
        session.run("bash", "scripts/test.sh", "rootless", "--", *session.posargs, external=True)
        return
    _install(session)
    session.run("pytest", "-ra", *(session.posargs or ["tests/kernel", "tests/integration"]))


@nox.session(venv_backend="none" if IS_ROOT else None)
def vm(session: nox.Session) -> None:
    """The cgroup tests in a systemd VM (tests/vm; the image comes from scripts/vm-image.sh)."""
    if IS_ROOT:
        session.error(ROOT_MESSAGE)
    _install(session)
    session.run("pytest", "-ra", *(session.posargs or ["tests/vm"]))


@nox.session(venv_backend="none" if IS_ROOT else None)
def bench(session: nox.Session) -> None:
    """Side-by-side benchmarks against podman and bwrap -> docs/benchmarks.md (not in CI).

    As root, benchmarks/bench.py reruns itself as the unprivileged user sbtest with this
    interpreter (which must have the project's dependencies) and copies the results back.
    """
    if IS_ROOT:
        import sys

        session.run(sys.executable, "benchmarks/bench.py", *session.posargs, external=True)
        return
    _install(session)
    session.run("python", "benchmarks/bench.py", *session.posargs)
