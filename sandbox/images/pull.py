"""Pulling images from registries: resolve the name, fetch manifest, config and layers, store.

The order is the single-thread rule's: the store forks the process that unpacks the new
layers into a user namespace first; only then do the threads start: blobs download in a
thread pool (one connection per thread, each blob verified against its digest while
streaming, see ImageStore.blob_writer) and the store streams each layer into the unpacking
process as it arrives, so downloading, decompressing and unpacking overlap. A layer is
published only after its blob's digest and its diff_id are verified. The pool is joined and
the progress display stopped before the store returns. ensure_image() is the entry point of
`sandbox run`: it looks in the store first and pulls according to the --pull policy.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any, Protocol

from sandbox.errors import AuthError, DigestError, ImageError, ImageNotFound, RegistryError
from sandbox.images import manifest as manifests
from sandbox.images import reference

if TYPE_CHECKING:
    from collections.abc import Callable

    from sandbox.config import Settings
    from sandbox.images.registries import Endpoint, RegistriesConfig
    from sandbox.images.registry import Client
    from sandbox.images.store import BlobArrival, Image, ImageStore
    from sandbox.rootless.idmap import IdMapping

POLICIES = ("always", "missing", "never", "newer")
MAX_PARALLEL = 4
MAX_CONFIG = 8 << 20


class Progress(Protocol):
    def message(self, text: str) -> None: ...
    def start(self, digest: str, size: int) -> None: ...
    def advance(self, digest: str, amount: int) -> None: ...
    def finish(self, digest: str, skipped: bool = False) -> None: ...
    def close(self) -> None: ...


class QuietProgress:
    def message(self, text: str) -> None:
        pass

    def start(self, digest: str, size: int) -> None:
        pass

    def advance(self, digest: str, amount: int) -> None:
        pass

    def finish(self, digest: str, skipped: bool = False) -> None:
        pass

    def close(self) -> None:
        pass


class LineProgress(QuietProgress):
    """One line per event on stderr, for logs and pipes (as podman without a terminal)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def _print(self, text: str) -> None:
        with self._lock:
            print(text, file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        self._print(text)

    def start(self, digest: str, size: int) -> None:
        self._print(f"Copying blob {digest[7:19]} ({size} bytes)")

    def finish(self, digest: str, skipped: bool = False) -> None:
        self._print(
            f"Copying blob {digest[7:19]} {'skipped: already exists' if skipped else 'done'}"
        )


class RichProgress(QuietProgress):
    """A bar per layer on a terminal. rich's refresh thread stops in close()."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._tasks: dict[str, Any] = {}
        self._progress.start()

    def message(self, text: str) -> None:
        self._progress.console.print(text)

    def start(self, digest: str, size: int) -> None:
        self._tasks[digest] = self._progress.add_task(f"blob {digest[7:19]}", total=size)

    def advance(self, digest: str, amount: int) -> None:
        self._progress.advance(self._tasks[digest], amount)

    def finish(self, digest: str, skipped: bool = False) -> None:
        if skipped:
            self._progress.console.print(f"Copying blob {digest[7:19]} skipped: already exists")

    def close(self) -> None:
        self._progress.stop()


def make_progress(mode: str | Progress) -> Progress:
    """mode: quiet, lines, bars, or auto (bars on a terminal, lines otherwise); or a Progress
    of the caller's (`sandbox job --json-events` turns pull progress into events)."""
    if not isinstance(mode, str):
        return mode
    if mode == "quiet":
        return QuietProgress()
    if mode == "bars" or (mode == "auto" and sys.stderr.isatty()):
        return RichProgress()
    return LineProgress()


def ensure_image(
    settings: Settings,
    mapping: IdMapping,
    name: str,
    *,
    policy: str = "missing",
    tls_verify: bool | None = None,
    platform: str | None = None,
    progress: str | Progress = "auto",
) -> Image:
    """The image `sandbox run` uses: from the store, pulled first when policy says so."""
    from sandbox.images.store import ImageStore

    store = ImageStore(settings.storage_root, mapping)
    if policy not in POLICIES:
        raise ImageError(
            f"invalid pull policy {policy!r}", hint=f"use one of {', '.join(POLICIES)}"
        )
    if policy in ("missing", "never"):
        try:
            return store.lookup(name)
        except ImageNotFound:
            if policy == "never":
                raise
    try:
        return pull(store, name, tls_verify=tls_verify, platform=platform, progress=progress)
    except (RegistryError, ImageNotFound):
        if policy == "newer":
            try:
                return store.lookup(name)
            except ImageNotFound:
                pass
        raise


def pull(
    store: ImageStore,
    name: str,
    *,
    tls_verify: bool | None = None,
    platform: str | None = None,
    progress: str | Progress = "auto",
    registries: RegistriesConfig | None = None,
) -> Image:
    """Pull name (short names through aliases and search registries, mirrors first)."""
    from sandbox.images import registries as registries_config

    config = registries if registries is not None else registries_config.load()
    want = manifests.parse_platform(platform) if platform else manifests.host()
    candidates = config.resolve(name)
    tried: list[str] = []
    auth_errors: list[AuthError] = []
    for ref in candidates:
        for endpoint in config.endpoints(ref, tls_verify=tls_verify):
            try:
                return _pull_from(store, ref, endpoint, want, progress)
            except AuthError as e:
                auth_errors.append(e)
                tried.append(f"{endpoint} (access denied)")
            except ImageNotFound:
                tried.append(f"{endpoint} (not found)")
            except RegistryError as e:
                tried.append(f"{endpoint} ({e})")
    if auth_errors and len(auth_errors) == len(tried):
        raise auth_errors[0]
    raise ImageNotFound(
        f"image {name!r} not found in any registry",
        context=f"tried {'; '.join(tried)}",
        hint="check the name and tag; short names resolve through "
        f"{registries_config.config_file()} (aliases, unqualified-search-registries)",
    )


def _pull_from(
    store: ImageStore,
    ref: reference.Reference,
    endpoint: Endpoint,
    want: manifests.Platform,
    progress_mode: str | Progress,
) -> Image:
    from sandbox.images.registry import Client

    client = Client(endpoint)
    wanted = ref.digest or ref.tag or reference.DEFAULT_TAG
    body, doc, media_type = _fetch_manifest(client, wanted, f"image {ref}")
    manifest_digest = "sha256:" + hashlib.sha256(body).hexdigest()
    if ref.digest and manifest_digest != ref.digest:
        raise DigestError(
            f"digest mismatch for the manifest of {ref}",
            context=f"expected {ref.digest}, got {manifest_digest}",
        )
    top_digest = manifest_digest
    if media_type in manifests.INDEXES:
        chosen = manifests.select(doc, want, f"image {ref}")
        body, doc, media_type = _fetch_manifest(client, chosen.digest, f"image {ref}")
        manifest_digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if manifest_digest != chosen.digest:
            raise DigestError(
                f"digest mismatch for the {chosen.platform} manifest of {ref}",
                context=f"expected {chosen.digest}, got {manifest_digest}",
            )
    image_manifest = manifests.parse_manifest(doc, media_type, f"image {ref}")
    fetched: list[str] = []
    layers = image_manifest.layers
    # Each blob once, even when a manifest lists a layer twice.
    blobs = list({layer.digest: layer for layer in layers}.values())

    def fetch(arrivals: dict[str, BlobArrival]) -> Callable[[], None]:
        # Called by the store once the unpacking process exists: threads may start now
        # (rich's progress display is one); the single-thread rule holds again after wait().
        # SIGINT waits until every thread is started and known to its pool: a
        # KeyboardInterrupt inside submit() can leave a started thread that shutdown() does
        # not join, and the store forks again after a failed pull (the single-thread rule).
        # The threads inherit the mask, so the main thread is the one that gets SIGINT.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        progress: Progress | None = None
        pool: concurrent.futures.ThreadPoolExecutor | None = None
        try:
            progress = make_progress(progress_mode)
            pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=max(1, min(MAX_PARALLEL, len(blobs)))
            )
            futures = [
                pool.submit(
                    _fetch_blob, store, client, blob, progress, fetched, arrivals.get(blob.digest)
                )
                for blob in blobs
            ]
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a pending SIGINT lands here
            progress.message(f"Trying to pull {ref}...")
        except BaseException:
            try:  # no thread may outlive this call either
                for arrival in arrivals.values():
                    arrival.cancel()
                if pool is not None:
                    pool.shutdown(wait=True, cancel_futures=True)
                if progress is not None:
                    progress.close()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            raise
        # Not None from here on; a closure would not keep mypy's narrowing of the names.
        running_pool, shown = pool, progress

        def wait() -> None:
            try:
                for future in concurrent.futures.as_completed(futures):
                    future.result()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
            finally:
                running_pool.shutdown(wait=True)
                shown.close()
            if progress_mode != "quiet":
                digest = image_manifest.config.digest[7:19]
                print(f"Copying config {digest} done", file=sys.stderr)
                print("Writing manifest to image destination", file=sys.stderr)

        return wait

    try:
        config = _fetch_small_blob(client, image_manifest.config)
        stored_ref = reference.Reference(
            ref.domain, ref.path, ref.tag if not ref.digest else None, None
        )
        names = [str(stored_ref)] if stored_ref.tag else []
        return store.add_image(
            manifest=body,
            manifest_type=media_type,
            config=config,
            layer_blobs=[layer.digest for layer in layers],
            names=names,
            repo_digest=f"{ref.repository}@{top_digest}",
            fetch=fetch,
        )
    except BaseException:
        if fetched:
            store.discard_blobs(fetched)
        raise


def _fetch_manifest(client: Client, wanted: str, what: str) -> tuple[bytes, Any, str]:
    response = client.request(
        "GET",
        client.url("manifests", wanted),
        headers={"Accept": manifests.ACCEPT},
        not_found=what,
    )
    try:
        body, doc = response.read_json(f"the manifest of {what}")
        media_type = manifests.media_type_of(doc, response.headers.get("Content-Type"))
    finally:
        response.close()
    return body, doc, media_type


def _fetch_small_blob(client: Client, descriptor: manifests.Descriptor) -> bytes:
    if descriptor.size > MAX_CONFIG:
        raise ImageError(f"the image config {descriptor.digest} is implausibly large")
    response = client.request("GET", client.url("blobs", descriptor.digest), not_found="config")
    try:
        data = response.read_limited(MAX_CONFIG, "the image config")
    finally:
        response.close()
    got = "sha256:" + hashlib.sha256(data).hexdigest()
    if got != descriptor.digest:
        raise DigestError(
            f"digest mismatch for blob {descriptor.digest} (the image config)",
            context=f"expected {descriptor.digest}, got {got}",
        )
    return data


def _fetch_blob(
    store: ImageStore,
    client: Client,
    layer: manifests.Descriptor,
    progress: Progress,
    fetched: list[str],
    arrival: BlobArrival | None = None,
) -> None:
    with store.blob_writer(layer.digest, arrival) as writer:
        if writer is None:
            progress.finish(layer.digest, skipped=True)
            return
        progress.start(layer.digest, layer.size)
        response = client.request(
            "GET", client.url("blobs", layer.digest), not_found=f"blob {layer.digest}"
        )
        try:
            for chunk in response.chunks():
                writer.write(chunk)
                progress.advance(layer.digest, len(chunk))
                if writer.size > layer.size:
                    break  # longer than the manifest says: fails the digest check below
        finally:
            response.close()
        if writer.size != layer.size:
            raise DigestError(
                f"blob {layer.digest} has the wrong size",
                context=f"expected {layer.size} bytes, got {writer.size}",
            )
    fetched.append(layer.digest)
    progress.finish(layer.digest)  # verified and stored


def progress_mode(quiet: bool) -> str:
    return "quiet" if quiet else "auto"
