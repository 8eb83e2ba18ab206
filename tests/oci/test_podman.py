"""podman drives sandbox-runtime (podman --runtime), rootless: run, run -d, exec, stop, rm.

podman runs in the test's private XDG dirs with vfs storage, the cgroupfs manager (there is no
systemd here) and the file events logger, and a local image imported from our busybox rootfs.
It calls the runtime from inside its own user namespace, with a config.json that has none.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.oci.runtime_support import wrapper

pytestmark = pytest.mark.needs("unprivileged", "userns", "newuidmap", "busybox", "podman")

IMAGE = "localhost/sandbox-runtime-bb:latest"


class Podman:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.runtime = wrapper(root)
        self.env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": str(root / "home"),
            "XDG_RUNTIME_DIR": str(root / "run"),
            "XDG_CONFIG_HOME": str(root / "config"),
            "XDG_DATA_HOME": str(root / "data"),
        }
        (root / "home").mkdir()
        (root / "run").mkdir(mode=0o700)
        conf = root / "config/containers"
        conf.mkdir(parents=True)
        (conf / "storage.conf").write_text(
            f'[storage]\ndriver = "vfs"\ngraphroot = "{root}/graph"\nrunroot = "{root}/runroot"\n'
        )
        (conf / "containers.conf").write_text(
            '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
            '[containers]\nnetns = "none"\n'
        )

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["podman", "--runtime", str(self.runtime), *args],
            env=self.env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory, busybox_tarball: Path) -> Iterator[Podman]:
    p = Podman(tmp_path_factory.mktemp("podman"))
    done = p("import", "-q", str(busybox_tarball), IMAGE)
    assert done.returncode == 0, done.stderr
    yield p
    # The vfs store holds files of subordinate ids: remove them from podman's namespace.
    p("rm", "-a", "-f")
    p("unshare", "rm", "-rf", str(p.root / "graph"), str(p.root / "runroot"))


def test_podman_run_rm_echo(podman: Podman) -> None:
    done = podman("run", "--rm", IMAGE, "echo", "hi")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hi\n"
    # The process ran in a container of its own: PID 1 of a PID namespace, hostname set.
    done = podman("run", "--rm", "--hostname", "inside", IMAGE, "sh", "-c", "echo $$; hostname")
    assert done.stdout.split() == ["1", "inside"], done.stderr
    failed = podman("run", "--rm", IMAGE, "sh", "-c", "exit 3")
    assert failed.returncode == 3


def test_podman_run_detached_exec_stop_rm(podman: Podman) -> None:
    done = podman("run", "-d", "--name", "rt-detached", IMAGE, "sleep", "600")
    assert done.returncode == 0, done.stderr
    try:
        listed = podman("ps", "--format", "{{.Names}} {{.Status}}")
        assert listed.stdout.startswith("rt-detached Up"), listed.stdout + listed.stderr
        ran = podman("exec", "rt-detached", "sh", "-c", "echo in-exec; cat /proc/1/cmdline")
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.split("\n")[0] == "in-exec"
        assert ran.stdout.split("\n")[1].split("\0")[:2] == ["sleep", "600"]
        assert podman("exec", "rt-detached", "sh", "-c", "exit 4").returncode == 4
        tty = podman("exec", "-t", "rt-detached", "tty")
        assert tty.stdout.strip() == "/dev/pts/0", tty.stderr
        stopped = podman("stop", "-t", "1", "rt-detached")
        assert stopped.returncode == 0, stopped.stderr
        status = podman("inspect", "--format", "{{.State.Status}}", "rt-detached")
        assert status.stdout.strip() == "exited", status.stderr
    finally:
        removed = podman("rm", "-f", "rt-detached")
    assert removed.returncode == 0, removed.stderr
    assert "rt-detached" not in podman("ps", "-a", "--format", "{{.Names}}").stdout
