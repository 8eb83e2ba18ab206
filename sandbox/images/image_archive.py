"""`save` and `load`: images as docker-archive, OCI archive or OCI layout directory.

docker-archive (docker save, podman save): manifest.json [{"Config", "RepoTags", "Layers"}],
the config file and one uncompressed tar per layer. OCI archive: a tar of an OCI layout
(oci-layout, index.json, blobs/sha256/*). An OCI layout directory is the same, unpacked.

The image id is the config's digest and the config bytes are copied unchanged, so save, rmi,
load gives back the same id. Archives are hostile input: members are looked up by the names
the manifest gives and must be regular files; blob names must be sha256 digests; everything
read is verified by digest on its way into the store (ImageStore.blob_writer). save writes a
temporary file and renames it, so a failed save leaves no half archive.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import stat
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from sandbox.errors import ImageError, SandboxError, UsageError
from sandbox.images import manifest as manifests
from sandbox.images import reference

if TYPE_CHECKING:
    from sandbox.images.store import Image, ImageStore

FORMATS = ("docker-archive", "oci-archive")
MAX_JSON = 8 << 20
REF_NAME = "org.opencontainers.image.ref.name"
CHUNK = 1 << 20

_TO_OCI = {
    manifests.DOCKER_LAYER_GZIP: manifests.OCI_LAYER_GZIP,
    manifests.DOCKER_LAYER: manifests.OCI_LAYER,
    manifests.DOCKER_CONFIG: manifests.OCI_CONFIG,
}

Opener = Callable[[str], IO[bytes]]


# -- save ----------------------------------------------------------------------------------


def save(store: ImageStore, name: str, output: Path, format_: str) -> None:
    if format_ not in FORMATS:
        raise UsageError(f"unknown --format {format_!r}", hint=f"use one of {', '.join(FORMATS)}")
    image = store.lookup(name)
    body, media_type = store.manifest_bytes(image)
    manifest = manifests.parse_manifest(json.loads(body), media_type, f"image {image.short_id}")
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            if format_ == "docker-archive":
                _save_docker(store, image, manifest, tar)
            else:
                _save_oci(store, image, manifest, tar)
        os.rename(tmp, output)
    except OSError as e:
        raise ImageError(f"cannot write {output}", context=e.strerror or str(e)) from e
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _save_docker(
    store: ImageStore, image: Image, manifest: manifests.Manifest, tar: tarfile.TarFile
) -> None:
    from sandbox.images import archive

    config_name = f"{manifest.config.hex}.json"
    _add_bytes(tar, config_name, store.blob_path(manifest.config.digest).read_bytes())
    layer_names = []
    for diff_id, blob in zip(image.layers, image.blobs, strict=True):
        name = f"{diff_id[7:]}/layer.tar"
        # docker-archive layers are uncompressed: their sha256 is the diff_id.
        size = json.loads((store.layer_dir(diff_id) / "layer.json").read_bytes())["size"]
        fd = os.open(store.blob_path(blob), os.O_RDONLY | os.O_CLOEXEC)
        try:
            raw = io.BufferedReader(io.FileIO(fd, "rb", closefd=False), buffer_size=CHUNK)
            stream = archive.decompressed(raw)
            info = tarfile.TarInfo(name)
            info.size = int(size)
            info.mode = 0o644
            info.mtime = int(time.time())
            tar.addfile(info, stream)
        finally:
            os.close(fd)
        layer_names.append(name)
    entry = {"Config": config_name, "RepoTags": list(image.names), "Layers": layer_names}
    _add_bytes(tar, "manifest.json", json.dumps([entry]).encode())


def _save_oci(
    store: ImageStore, image: Image, manifest: manifests.Manifest, tar: tarfile.TarFile
) -> None:
    config = manifest.config
    doc = {
        "schemaVersion": 2,
        "mediaType": manifests.OCI_MANIFEST,
        "config": {**config.to_json(), "mediaType": manifests.OCI_CONFIG},
        "layers": [
            {**layer.to_json(), "mediaType": _TO_OCI.get(layer.media_type, layer.media_type)}
            for layer in manifest.layers
        ],
    }
    body = json.dumps(doc, separators=(",", ":")).encode()
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    _add_bytes(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    descriptor: dict[str, Any] = {
        "mediaType": manifests.OCI_MANIFEST,
        "digest": digest,
        "size": len(body),
    }
    if image.names:
        descriptor["annotations"] = {REF_NAME: image.names[0]}
    index = {"schemaVersion": 2, "manifests": [descriptor]}
    _add_bytes(tar, "index.json", json.dumps(index).encode())
    _add_bytes(tar, f"blobs/sha256/{digest[7:]}", body)
    for blob in (config, *manifest.layers):
        tar.add(store.blob_path(blob.digest), arcname=f"blobs/sha256/{blob.hex}", recursive=False)


# -- load ----------------------------------------------------------------------------------


def load(store: ImageStore, source: Path) -> list[Image]:
    """Load every image in source (docker-archive, OCI archive or OCI layout directory).
    A load that fails (a bad archive, a full disk) deletes the blobs it stored for images
    it did not add: the store is left as it was."""
    written: list[str] = []
    try:
        return _load(store, source, written)
    except BaseException:
        with contextlib.suppress(SandboxError, OSError):
            store.discard_blobs(written)
        raise


def _load(store: ImageStore, source: Path, written: list[str]) -> list[Image]:
    try:
        st = os.stat(source)
    except OSError as e:
        raise ImageError(f"cannot load {source}", context=e.strerror) from e
    if stat.S_ISDIR(st.st_mode):
        return _load_oci(store, lambda name: _open_in_dir(source, name), str(source), written)
    try:
        tar = tarfile.open(source, "r:*")  # noqa: SIM115 - closed by the with below
    except (tarfile.TarError, OSError) as e:
        raise ImageError(
            f"cannot load {source}",
            context=f"not a tar archive ({e})",
            hint="give a docker-archive, an OCI archive or an OCI layout directory",
        ) from e
    with tar:

        def open_member(name: str) -> IO[bytes]:
            try:
                member = tar.getmember(name)
            except KeyError as e:
                raise ImageError(f"{source} has no member {name!r}") from e
            handle = tar.extractfile(member) if member.isfile() else None
            if handle is None:
                raise ImageError(f"{source}: {name!r} is not a regular file")
            return handle

        names = set(tar.getnames())
        if "manifest.json" in names:
            return _load_docker(store, open_member, str(source), written)
        if "index.json" in names:
            return _load_oci(store, open_member, str(source), written)
    raise ImageError(
        f"cannot load {source}",
        context="neither manifest.json (docker-archive) nor index.json (OCI) in it",
    )


def _open_in_dir(root: Path, name: str) -> IO[bytes]:
    parts = Path(name).parts
    if not parts or ".." in parts or Path(name).is_absolute():
        raise ImageError(f"{root}: refusing the path {name!r}")
    try:
        fd = os.open(root.joinpath(*parts), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise ImageError(f"cannot read {root / name}", context=e.strerror) from e
    return os.fdopen(fd, "rb")


def _read_json(opener: Opener, name: str, where: str) -> Any:
    with opener(name) as f:
        data = f.read(MAX_JSON + 1)
    if len(data) > MAX_JSON:
        raise ImageError(f"{where}: {name} is too large")
    try:
        return json.loads(data)
    except ValueError as e:
        raise ImageError(f"{where}: {name} is not JSON", context=str(e)) from e


def _store_member(
    store: ImageStore, opener: Opener, name: str, written: list[str]
) -> tuple[str, int, str]:
    """Copy a member into the blob store: (digest, size, media type by compression)."""
    from sandbox.images import archive

    hasher = hashlib.sha256()
    size = 0
    head = b""
    with opener(name) as f:
        while chunk := f.read(CHUNK):
            if not head:
                head = chunk[:512]
            hasher.update(chunk)
            size += len(chunk)
    digest = "sha256:" + hasher.hexdigest()
    with store.blob_writer(digest) as writer, opener(name) as f:
        if writer is not None:
            written.append(digest)
            while chunk := f.read(CHUNK):
                writer.write(chunk)
    kind = archive.detect(head)
    media_type = {
        "gzip": manifests.OCI_LAYER_GZIP,
        "zstd": manifests.OCI_LAYER_ZSTD,
        "tar": manifests.OCI_LAYER,
    }.get(kind)
    if media_type is None:
        raise ImageError(f"layer {name} is compressed with {kind}, which images cannot use")
    return digest, size, media_type


def _load_docker(store: ImageStore, opener: Opener, where: str, written: list[str]) -> list[Image]:
    entries = _read_json(opener, "manifest.json", where)
    if not isinstance(entries, list) or not entries:
        raise ImageError(f"{where}: manifest.json must be a non-empty list")
    loaded = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
            raise ImageError(f"{where}: manifest.json entry without Config")
        layers = entry.get("Layers")
        if not isinstance(layers, list) or not all(isinstance(x, str) for x in layers):
            raise ImageError(f"{where}: manifest.json entry without a Layers list")
        with opener(entry["Config"]) as f:
            config = f.read(MAX_JSON + 1)
        if len(config) > MAX_JSON:
            raise ImageError(f"{where}: {entry['Config']} is too large")
        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        descriptors: list[dict[str, Any]] = []
        for layer in layers:
            digest, size, media_type = _store_member(store, opener, layer, written)
            descriptors.append({"mediaType": media_type, "digest": digest, "size": size})
        manifest = {
            "schemaVersion": 2,
            "mediaType": manifests.OCI_MANIFEST,
            "config": {
                "mediaType": manifests.OCI_CONFIG,
                "digest": config_digest,
                "size": len(config),
            },
            "layers": descriptors,
        }
        tags = entry.get("RepoTags") or []
        names = [t for t in tags if isinstance(t, str)]
        for name in names:
            reference.parse(name)
        loaded.append(
            store.add_image(
                manifest=json.dumps(manifest, separators=(",", ":")).encode(),
                manifest_type=manifests.OCI_MANIFEST,
                config=config,
                layer_blobs=[str(d["digest"]) for d in descriptors],
                names=names,
            )
        )
    return loaded


def _load_oci(store: ImageStore, opener: Opener, where: str, written: list[str]) -> list[Image]:
    index = _read_json(opener, "index.json", where)
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise ImageError(f"{where}: index.json has no manifests list")
    loaded = []
    for i, raw in enumerate(index["manifests"]):
        d = manifests.descriptor(raw, f"{where}: index.json manifest {i}")
        annotations = raw.get("annotations") if isinstance(raw, dict) else None
        ref_name = annotations.get(REF_NAME) if isinstance(annotations, dict) else None
        body = _blob(opener, d.digest, where)
        doc = json.loads(body)
        media_type = manifests.media_type_of(doc, d.media_type)
        if media_type in manifests.INDEXES:
            d = manifests.select(doc, manifests.host(), f"{where}: {d.digest}")
            body = _blob(opener, d.digest, where)
            doc = json.loads(body)
            media_type = manifests.media_type_of(doc, d.media_type)
        manifest = manifests.parse_manifest(doc, media_type, f"{where}: {d.digest}")
        config = _blob(opener, manifest.config.digest, where)
        for layer in manifest.layers:
            with store.blob_writer(layer.digest) as writer, opener(_blob_name(layer.digest)) as f:
                if writer is not None:
                    written.append(layer.digest)
                    while chunk := f.read(CHUNK):
                        writer.write(chunk)
        names = []
        if isinstance(ref_name, str) and ("/" in ref_name or ":" in ref_name):
            with contextlib.suppress(UsageError):
                names.append(str(reference.normalize(ref_name)))
        loaded.append(
            store.add_image(
                manifest=body,
                manifest_type=media_type,
                config=config,
                layer_blobs=[layer.digest for layer in manifest.layers],
                names=names,
            )
        )
    return loaded


def _blob_name(digest: str) -> str:
    return f"blobs/sha256/{manifests.check_digest(digest, 'a blob')[7:]}"


def _blob(opener: Opener, digest: str, where: str) -> bytes:
    with opener(_blob_name(digest)) as f:
        data = f.read(MAX_JSON + 1)
    if len(data) > MAX_JSON:
        raise ImageError(f"{where}: blob {digest} is too large for a manifest or config")
    got = "sha256:" + hashlib.sha256(data).hexdigest()
    if got != digest:
        from sandbox.errors import DigestError

        raise DigestError(
            f"digest mismatch for blob {digest} in {where}", context=f"expected {digest}, got {got}"
        )
    return data
