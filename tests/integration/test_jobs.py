"""`sandbox job`: steps in one container, stop at the first failure, events, caches."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

Run = Callable[..., subprocess.CompletedProcess[str]]

pytestmark = pytest.mark.needs("userns", "subids", "newuidmap")


def _project(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sandbox.yaml"
    path.write_text(text)
    return path


def _events(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_failing_second_step_exits_with_its_code_and_the_events_say_so(
    sandbox: Run, busybox_image: str, tmp_path: Path
) -> None:
    path = _project(
        tmp_path,
        f"image: {busybox_image}\n"
        "jobs:\n"
        "  test:\n"
        "    steps:\n"
        "      - echo one > /tmp/first\n"
        "      - run: sh -c 'cat /tmp/first; exit 3'\n"
        "        name: fails\n"
        "      - echo never-runs\n",
    )
    done = sandbox("job", "-f", path, "--json-events", "test")
    assert done.returncode == 3, done.stderr
    events = _events(done.stdout)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "pull" and "start" in kinds
    ends = [e for e in events if e["event"] == "step_end"]
    assert [(e["index"], e["exit_code"]) for e in ends] == [(1, 0), (2, 3)]
    assert ends[1]["name"] == "fails"
    exit_event = next(e for e in events if e["event"] == "exit")
    assert exit_event["exit_code"] == 3 and exit_event["failed_step"] == 2
    assert kinds[-1] == "resources"
    # The second step saw the first one's file: one container for the whole job.
    assert "one" in done.stderr and "never-runs" not in done.stderr
    assert "==> [2/3] fails" in done.stderr
    # Not a terminal: no colour codes.
    assert "\033[" not in done.stderr
    # The job's container is gone.
    assert sandbox("ps", "-a", "-q").stdout.strip() == ""


def test_steps_get_env_workdir_project_mount_and_setup(
    sandbox: Run, busybox_image: str, tmp_path: Path
) -> None:
    (tmp_path / "input.txt").write_text("from the project\n")
    path = _project(
        tmp_path,
        f"image: {busybox_image}\n"
        "env: {GREETING: hello}\n"
        "setup: ['echo setup-ran > /tmp/setup']\n"
        "jobs:\n"
        "  build:\n"
        "    env: [LEVEL=job]\n"
        "    steps:\n"
        "      - cat input.txt; pwd\n"
        "      - run: echo $GREETING $LEVEL $STEP; pwd; cat /tmp/setup\n"
        "        env: {STEP: two}\n"
        "        workdir: /tmp\n",
    )
    done = sandbox("job", "-f", path, "build")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "from the project\n/work\n" in done.stdout
    assert "hello job two\n/tmp\nsetup-ran\n" in done.stdout
    assert "==> [1/3] setup: echo setup-ran" in done.stdout


def test_caches_are_named_volumes_kept_between_runs(
    sandbox: Run, busybox_image: str, tmp_path: Path
) -> None:
    path = _project(
        tmp_path,
        f"image: {busybox_image}\n"
        "caches: {jobcache: /cache}\n"
        "jobs:\n"
        "  count:\n"
        "    steps:\n"
        "      - echo x >> /cache/runs; wc -l < /cache/runs\n",
    )
    first = sandbox("job", "-f", path, "count")
    second = sandbox("job", "-f", path, "count")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert int(second.stdout.splitlines()[-2]) == int(first.stdout.splitlines()[-2]) + 1
    assert "jobcache" in sandbox("volume", "ls", "-q").stdout.split()
    assert sandbox("volume", "rm", "jobcache").returncode == 0
    assert "jobcache" not in sandbox("volume", "ls", "-q").stdout.split()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "image: x\njobs:\n  t:\n    steps:\n      - run: 5\n        nmae: x\n",
            ":6: jobs.t.steps[0].nmae",
        ),
        ("image: x\njobs:\n  t:\n    stepz: []\n", ":4: jobs.t.stepz: unknown key"),
        ("image: x\njobs:\n  t:\n    steps: []\n", ":4: jobs.t.steps"),
    ],
)
def test_a_bad_project_file_is_one_line_with_file_line_and_key(
    sandbox: Run, tmp_path: Path, text: str, expected: str
) -> None:
    path = _project(tmp_path, text)
    done = sandbox("job", "-f", path, "t")
    assert done.returncode == 125
    assert f"{path}{expected}" in done.stderr
    assert "Traceback" not in done.stderr


def test_unknown_job_names_the_known_ones(sandbox: Run, tmp_path: Path) -> None:
    path = _project(tmp_path, "image: x\njobs:\n  lint:\n    steps: [true]\n")
    done = sandbox("job", "-f", path, "test")
    assert done.returncode == 125
    assert "lint" in done.stderr
