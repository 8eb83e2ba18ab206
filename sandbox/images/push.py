"""Pushing a stored image to a registry: blobs the registry lacks, then the manifest.

The image must have its manifest and layer blobs in the store (pulled or loaded images do;
an image imported from a rootfs tarball has only unpacked layers). Blobs are uploaded whole
(POST to open an upload, PUT with ?digest= to finish), each skipped when a HEAD says the
registry already has it. The manifest goes last, so the registry never names a missing blob.
"""

from __future__ import annotations

import json
import sys
import urllib.parse
from typing import TYPE_CHECKING

from sandbox.errors import RegistryError, UsageError
from sandbox.images import manifest as manifests
from sandbox.images import reference

if TYPE_CHECKING:
    from sandbox.images.registry import Client
    from sandbox.images.store import ImageStore


def push(store: ImageStore, source: str, dest: str, *, tls_verify: bool | None, quiet: bool) -> str:
    """Push the image source names to dest (REGISTRY/PATH[:TAG]); returns the manifest digest."""
    from sandbox.images import registries
    from sandbox.images.registry import Client

    image = store.lookup(source)
    body, media_type = store.manifest_bytes(image)
    manifest = manifests.parse_manifest(json.loads(body), media_type, f"image {image.short_id}")
    dest = dest.removeprefix("docker://")
    ref = reference.parse(dest)
    if ref.short:
        raise UsageError(
            f"push needs a registry in the destination, not {dest!r}",
            hint="e.g. sandbox push IMAGE 127.0.0.1:5000/NAME:TAG",
        )
    if ref.digest:
        raise UsageError("push to a tag, not a digest", context=dest)
    config = registries.load()
    full = config.resolve(dest)[0]
    endpoint = config.endpoints(full, tls_verify=tls_verify)[-1]  # never push to a mirror
    client = Client(endpoint, actions="pull,push")
    for blob in (*manifest.layers, manifest.config):
        if not quiet:
            print(f"Copying blob {blob.hex[:12]}", file=sys.stderr, flush=True)
        _upload(store, client, blob)
    response = client.request(
        "PUT",
        client.url("manifests", full.tag or reference.DEFAULT_TAG),
        headers={"Content-Type": media_type},
        body=body,
        ok=(200, 201, 202),
    )
    response.close()
    if not quiet:
        print("Writing manifest to image destination", file=sys.stderr)
    return image.digest or ""


def _upload(store: ImageStore, client: Client, blob: manifests.Descriptor) -> None:
    head = client.request("HEAD", client.url("blobs", blob.digest), ok=(200, 404))
    head.close()
    if head.status == 200:
        return
    path = store.blob_path(blob.digest)
    started = client.request("POST", f"/v2/{client.path}/blobs/uploads/", body=b"", ok=(202,))
    started.close()
    location = started.headers.get("Location")
    if not location:
        raise RegistryError(f"{client.host} opened an upload without a Location")
    url = urllib.parse.urlsplit(location)
    if url.netloc and url.netloc != client.host:
        raise RegistryError(f"{client.host} sent uploads to another host", context=location)
    query = urllib.parse.parse_qsl(url.query, keep_blank_values=True)
    query.append(("digest", blob.digest))
    target = url.path + "?" + urllib.parse.urlencode(query)
    with path.open("rb") as f:
        size = path.stat().st_size
        done = client.request(
            "PUT",
            target,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
            body_file=f,
            ok=(201, 204),
        )
    done.close()
