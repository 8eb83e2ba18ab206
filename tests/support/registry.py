"""A real OCI distribution registry for tests: Debian's docker-registry on 127.0.0.1.

Registry.start() picks a free port, writes a config with a private storage directory and
waits until /v2/ answers; stop() terminates it. push_layout() fills it from an OCI layout
with skopeo (a third-party pusher, so our puller is checked against someone else's writer).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

BINARY = Path("/usr/bin/docker-registry")


class RegistryUnavailable(Exception):
    pass


class Registry:
    def __init__(self, root: Path):
        self.root = root
        self.storage = root / "storage"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Registry:
        if not BINARY.exists():
            raise RegistryUnavailable(f"{BINARY} is missing; apt-get install docker-registry")
        if shutil.which("skopeo") is None:
            raise RegistryUnavailable("skopeo is missing; apt-get install skopeo")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.storage.mkdir(parents=True, exist_ok=True)
        config = self.root / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log: {level: error}\n"
            f"storage:\n  filesystem: {{rootdirectory: {self.storage}}}\n"
            "  delete: {enabled: true}\n"
            f"http: {{addr: '{self.host}'}}\n"
        )
        log = (self.root / "registry.log").open("wb")
        self.process = subprocess.Popen(
            [str(BINARY), "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
            if self.process.poll() is not None:
                break
        self.stop()
        raise RegistryUnavailable(
            f"docker-registry did not start: {(self.root / 'registry.log').read_text()[-2000:]}"
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def push_layout(self, layout: Path, tag: str, dest: str) -> None:
        """skopeo copy oci:LAYOUT:TAG docker://HOST/DEST (every platform of an index)."""
        subprocess.run(
            [
                "skopeo",
                "copy",
                "--all",
                "--quiet",
                "--dest-tls-verify=false",
                f"oci:{layout}:{tag}",
                f"docker://{self.host}/{dest}",
            ],
            check=True,
            capture_output=True,
            timeout=600,
        )

    def blob_data(self, digest: str) -> Path:
        hex_ = digest.removeprefix("sha256:")
        return self.storage / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"
