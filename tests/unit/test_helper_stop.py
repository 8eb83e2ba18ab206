"""Stopping a network helper: its end is awaited on a pidfd, and it is always reaped."""

from __future__ import annotations

import subprocess

from sandbox.runtime import network


def test_exited_returns_when_the_process_ends_and_leaves_the_reaping_to_wait() -> None:
    process = subprocess.Popen(["sleep", "0.05"])
    assert network._exited(process, timeout=5)
    assert process.returncode is None  # not reaped by the check itself
    assert process.wait(timeout=1) == 0


def test_exited_gives_up_after_the_timeout() -> None:
    process = subprocess.Popen(["sleep", "30"])
    try:
        assert not network._exited(process, timeout=0.2)
        assert process.poll() is None  # still running: the check gave up, it did not kill
    finally:
        process.kill()
        process.wait()


def test_stop_terminates_and_reaps_a_helper_without_an_exit_fd() -> None:
    process = subprocess.Popen(["sleep", "30"])
    helper = network.Helper("test", process, process.pid)
    helper.stop()
    assert process.returncode is not None  # reaped: no zombie left behind
