"""A small OCI image builder for tests: layers, configs, manifests and indexes in an OCI layout.

Layers are tar streams built with tarfile (owners and modes set directly, no root needed) and
stored plain, gzip or zstd. Big layers are streamed to disk, never held in memory. The layout
directory is what `skopeo copy oci:DIR:TAG docker://...` and `sandbox load -i DIR` read.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TYPES = {
    "tar": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}
MTIME = 1_700_000_000
CHUNK = 1 << 20


def tar_bytes(entries: list[tuple[str, bytes | None]], *, mode: int = 0o644) -> bytes:
    """A tar of entries (name, content); content None makes a directory."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in entries:
            info = tarfile.TarInfo(name)
            info.mtime = MTIME
            if content is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.size = len(content)
                info.mode = mode
                tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def compress(data: bytes, kind: str) -> bytes:
    if kind == "gzip":
        return gzip.compress(data, compresslevel=1, mtime=0)
    if kind == "zstd":
        import zstandard

        return bytes(zstandard.ZstdCompressor().compress(data))
    return data


class Layout:
    """An OCI image layout directory being written."""

    def __init__(self, root: Path):
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.blobs.mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        self.manifests: list[dict[str, Any]] = []

    def blob(self, data: bytes, media_type: str) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        (self.blobs / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    def layer(self, tar: bytes, kind: str = "gzip") -> tuple[dict[str, Any], str]:
        """(descriptor, diff_id) of a layer from an uncompressed tar."""
        diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
        return self.blob(compress(tar, kind), LAYER_TYPES[kind]), diff_id

    def layer_from_file(self, path: Path, kind: str) -> tuple[dict[str, Any], str]:
        """A layer from a tar file on disk (plain or gzip -1), streamed."""
        diff = hashlib.sha256()
        blob = hashlib.sha256()
        tmp = self.blobs / ".incoming"
        with path.open("rb") as src, tmp.open("wb") as raw:

            class Tee(io.RawIOBase):
                def write(self, data: Any) -> int:
                    blob.update(data)
                    raw.write(data)
                    return len(data)

                def writable(self) -> bool:
                    return True

            sink: Any = Tee()
            out = (
                gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=1, mtime=0)
                if (kind == "gzip")
                else sink
            )
            while chunk := src.read(CHUNK):
                diff.update(chunk)
                out.write(chunk)
            if out is not sink:
                out.close()
        size = tmp.stat().st_size
        tmp.rename(self.blobs / blob.hexdigest())
        descriptor = {
            "mediaType": LAYER_TYPES[kind],
            "digest": f"sha256:{blob.hexdigest()}",
            "size": size,
        }
        return descriptor, f"sha256:{diff.hexdigest()}"

    def image(
        self,
        layers: list[tuple[dict[str, Any], str]],
        *,
        config: dict[str, Any] | None = None,
        architecture: str = "amd64",
    ) -> dict[str, Any]:
        """A manifest (and its config) for layers; returns the manifest's descriptor."""
        doc = {
            "created": "2024-01-01T00:00:00Z",
            "architecture": architecture,
            "os": "linux",
            "config": config or {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [diff for _, diff in layers]},
            "history": [{"created_by": "tests/support/oci.py"} for _ in layers],
        }
        config_descriptor = self.blob(json.dumps(doc).encode(), OCI_CONFIG)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_descriptor,
            "layers": [d for d, _ in layers],
        }
        descriptor = self.blob(json.dumps(manifest).encode(), OCI_MANIFEST)
        descriptor["platform"] = {"architecture": architecture, "os": "linux"}
        return descriptor

    def index(self, manifests: list[dict[str, Any]]) -> dict[str, Any]:
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        return self.blob(json.dumps(doc).encode(), OCI_INDEX)

    def tag(self, descriptor: dict[str, Any], name: str) -> None:
        entry = {k: v for k, v in descriptor.items() if k != "platform"}
        entry["annotations"] = {"org.opencontainers.image.ref.name": name}
        self.manifests = [
            m
            for m in self.manifests
            if m["annotations"]["org.opencontainers.image.ref.name"] != name
        ]
        self.manifests.append(entry)
        (self.root / "index.json").write_text(
            json.dumps({"schemaVersion": 2, "manifests": self.manifests})
        )


def random_tar(path: Path, size: int) -> Path:
    """A tar holding one file of size random bytes (incompressible), streamed to path."""
    with path.open("wb") as raw, tarfile.open(fileobj=raw, mode="w|") as tar:
        info = tarfile.TarInfo("big.bin")
        info.size = size
        info.mode = 0o644
        info.mtime = MTIME

        class Urandom(io.RawIOBase):
            def readinto(self, buffer: Any) -> int:
                view = memoryview(buffer)
                data = os.urandom(len(view))
                view[: len(data)] = data
                return len(data)

            def readable(self) -> bool:
                return True

        tar.addfile(info, io.BufferedReader(Urandom(), CHUNK))
    return path


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst)
