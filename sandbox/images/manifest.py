"""Image manifests and indexes (OCI and Docker v2 schema 2): media types, checks, platforms.

A manifest names one config blob and the layer blobs, lowest first; an index (a Docker
"manifest list") names one manifest per platform. Both come from hostile registries and
archives, so every field we use is type-checked and every digest is sha256 with 64 hex digits
before it becomes a file name.
"""

from __future__ import annotations

import dataclasses
import platform as host_platform
import re
from typing import Any

from sandbox.errors import ImageError, UsageError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = OCI_LAYER + "+gzip"
OCI_LAYER_ZSTD = OCI_LAYER + "+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEXES = (OCI_INDEX, DOCKER_LIST)
LAYERS = (
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    DOCKER_LAYER_GZIP,
    DOCKER_LAYER,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    DOCKER_FOREIGN,
)
ACCEPT = ", ".join((*MANIFESTS, *INDEXES))

_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_GOARCH = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i686": "386",
    "i386": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


@dataclasses.dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: str | None = None  # "os/arch[/variant]" in an index

    @property
    def hex(self) -> str:
        return self.digest[7:]

    def to_json(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclasses.dataclass(frozen=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclasses.dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text


def host() -> Platform:
    machine = host_platform.machine()
    arch = _GOARCH.get(machine, machine)
    variant = "v7" if machine == "armv7l" else None
    return Platform("linux", arch, variant)


def parse_platform(text: str) -> Platform:
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise UsageError(
            f"invalid --platform {text!r}", hint="use OS/ARCH[/VARIANT], e.g. linux/arm64"
        )
    return Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


def check_digest(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _DIGEST_RE.fullmatch(value):
        raise ImageError(
            f"{what} has an invalid or unsupported digest {value!r}",
            hint="only sha256 digests are supported",
        )
    return value


def descriptor(doc: Any, what: str) -> Descriptor:
    if not isinstance(doc, dict):
        raise ImageError(f"{what} is not a descriptor object")
    media_type = doc.get("mediaType")
    size = doc.get("size")
    if not isinstance(media_type, str):
        raise ImageError(f"{what} has no mediaType")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ImageError(f"{what} has an invalid size {size!r}")
    plat = None
    if isinstance(doc.get("platform"), dict):
        p = doc["platform"]
        if isinstance(p.get("os"), str) and isinstance(p.get("architecture"), str):
            variant = p.get("variant") if isinstance(p.get("variant"), str) else None
            plat = str(Platform(p["os"], p["architecture"], variant))
    return Descriptor(media_type, check_digest(doc.get("digest"), what), size, plat)


def media_type_of(doc: Any, header: str | None) -> str:
    """The document's media type: its own mediaType field, else the Content-Type header."""
    if isinstance(doc, dict) and isinstance(doc.get("mediaType"), str):
        return str(doc["mediaType"])
    if header:
        return header.split(";")[0].strip()
    if isinstance(doc, dict) and "manifests" in doc:
        return OCI_INDEX
    return OCI_MANIFEST


def parse_manifest(doc: Any, media_type: str, what: str) -> Manifest:
    if media_type not in MANIFESTS:
        raise ImageError(
            f"{what} has the unsupported media type {media_type!r}",
            hint="OCI and Docker v2 schema 2 images are supported",
        )
    if not isinstance(doc, dict) or not isinstance(doc.get("layers"), list):
        raise ImageError(f"{what} is malformed: no layers list")
    config = descriptor(doc.get("config"), f"{what}: config")
    layers = []
    for i, layer in enumerate(doc["layers"]):
        d = descriptor(layer, f"{what}: layer {i}")
        if d.media_type not in LAYERS:
            raise ImageError(f"{what}: layer {i} has the unsupported media type {d.media_type!r}")
        layers.append(d)
    return Manifest(media_type, config, tuple(layers))


def select(doc: Any, want: Platform, what: str) -> Descriptor:
    """The manifest for platform want in an index; the error lists the platforms there are."""
    if not isinstance(doc, dict) or not isinstance(doc.get("manifests"), list):
        raise ImageError(f"{what} is malformed: no manifests list")
    entries = [descriptor(m, f"{what}: manifest {i}") for i, m in enumerate(doc["manifests"])]
    candidates = [e for e in entries if e.media_type in MANIFESTS and e.platform]
    for entry in candidates:
        assert entry.platform is not None
        os_, _, rest = entry.platform.partition("/")
        arch, _, variant = rest.partition("/")
        if os_ != want.os or arch != want.architecture:
            continue
        if want.variant and variant and variant != want.variant:
            continue
        return entry
    available = ", ".join(sorted({e.platform for e in candidates if e.platform})) or "none"
    raise ImageError(
        f"{what} has no image for platform {want}",
        context=f"available platforms: {available}",
        hint="choose one with --platform OS/ARCH[/VARIANT]",
    )


def diff_ids(config: Any, what: str) -> list[str]:
    rootfs = config.get("rootfs") if isinstance(config, dict) else None
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(ids, list):
        raise ImageError(f"{what}: the image config has no rootfs.diff_ids")
    return [check_digest(d, f"{what}: rootfs.diff_ids") for d in ids]
