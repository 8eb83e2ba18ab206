"""`sandbox unshare`: exec a host command inside a mapped user (and mount) namespace."""

from __future__ import annotations

import os
import signal
import sys

from sandbox.config import Settings
from sandbox.errors import exit_code_for_wait_status
from sandbox.rootless import syscalls, userns
from sandbox.rootless.channel import Channel, ChannelClosed
from sandbox.runtime import init
from sandbox.runtime.container import mapping_for


def run(settings: Settings, command: list[str]) -> int:
    mapping = mapping_for(settings, None, lambda m: print(f"Warning: {m}", file=sys.stderr))
    argv = command or [os.environ.get("SHELL", "/bin/sh")]
    env = dict(os.environ, SANDBOX_UNSHARE="1", SANDBOX_STORAGE=str(settings.storage_root))

    def target(channel: Channel) -> int:
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        raise init.exec_failure(argv[0], init.execvpe(argv[0], argv, env))

    # The command stays in our process group and session, so ^C and the terminal work as for
    # any foreground program; we only wait for it.
    pid, channel = userns.spawn(
        mapping, target, flags=syscalls.CLONE_NEWNS, pdeathsig=signal.SIGKILL
    )
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        try:
            while True:
                channel.recv()
        except ChannelClosed:
            pass
        finally:
            channel.close()
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
    except BaseException:
        os.waitpid(pid, 0)
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
    return exit_code_for_wait_status(status)
