"""The local image store: content-addressed blobs, shared layer directories, the image index.

Layout under settings.storage_root:
    blobs/sha256/<hex>          content-addressed blobs (an imported image's OCI config)
    layers/<hex>/diff/          a layer unpacked once, shared by every image that has it
    layers/<hex>/layer.json     {"diff_id", "size", "created"}
    layers/.tmp-<random>/       a layer being unpacked or removed (never read as a layer)
    images.json                 the index: {"images": [{"id", "names", "layers", "created",
                                "size"}]}, layers being diff_ids, lowest first
    storage.lock                flock'ed around every change of the index or the layers

Crash safety: files are written to a .tmp- name, fsync'ed and renamed. A layer is unpacked in
layers/.tmp-*, synced, and renamed to its diff_id in the same lock hold that adds the image to
the index, so the index never names a missing layer. A killed import or removal leaves only
.tmp-* entries; the next import, removal or cleanup() deletes those nobody holds an flock on.
Layer files belong to the user's subordinate ids, so they are unpacked and deleted inside a
user namespace with the containers' mapping (sandbox.rootless.userns), never from outside.

A full disk (ENOSPC, or EDQUOT for a quota) while an image is added is one ImageError naming
the device (sandbox.rootless.filesystems); what the operation wrote so far is deleted (the
.tmp-* layer, the partial download), the index is not touched, and so the store stays as it
was: deleting needs no space.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import functools
import json
import os
import platform
import shutil
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from sandbox.errors import (
    DigestError,
    ImageError,
    ImageNotFound,
    LayerError,
    SandboxError,
    UsageError,
)
from sandbox.images import reference
from sandbox.rootless.channel import Channel
from sandbox.rootless.idmap import IdMapping

INDEX = "images.json"
LOCK = "storage.lock"
TMP_PREFIX = ".tmp-"
LAYER_LOCK_PREFIX = ".lock-"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NOT_FOUND_HINT = "sandbox images lists local images; import one with 'sandbox image import'"
FULL_HINT = "free some space there (sandbox rmi or sandbox image prune removes images)"

_GOARCH = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "armv7l": "arm",
    "i686": "386",
    "i386": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}

OnMessage = Callable[[dict[str, Any], list[int]], None]
Runner = Callable[[IdMapping, Callable[[Channel], int], OnMessage], int]
Warn = Callable[[str], None]
# A pull's downloads: fetch(arrivals) starts them (threads are allowed: it is called once the
# unpacking process exists) and returns a function that waits for all of them and raises the
# first error. Each layer blob goes through store.blob_writer(digest, arrivals.get(digest)).
Fetch = Callable[[dict[str, "BlobArrival"]], Callable[[], None]]


@dataclasses.dataclass(frozen=True)
class Image:
    id: str  # 64 hex, sha256 of the config blob
    names: tuple[str, ...]  # normalised, e.g. "localhost/busybox:latest"
    layers: tuple[str, ...]  # diff_ids "sha256:<hex>", lowest first
    created: str  # RFC3339
    size: int
    config: dict[str, Any]  # the OCI image config's "config" object (Env, Cmd, ...)
    digest: str | None = None  # the manifest's digest, for pulled and loaded images
    repo_digests: tuple[str, ...] = ()  # "REPOSITORY@sha256:..." as pulled
    blobs: tuple[str, ...] = ()  # layer blob digests ("sha256:..."), lowest first

    @property
    def short_id(self) -> str:
        return self.id[:12]


class BlobArrival:
    """A blob as it arrives: one thread downloads it (through BlobWriter), another reads it in
    order meanwhile (the pump that feeds the unpacking process). read() waits for more data,
    returns b"" at the end of a complete, verified blob and raises DownloadFailed when the
    download failed; cancel() makes the writer give up."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._fd = -1
        self._size = 0
        self._offset = 0
        self._done = False
        self._error: BaseException | None = None
        self.cancelled = False

    def attach(self, fd: int, size: int = 0) -> None:
        with self._cond:
            if self._fd == -1:
                self._fd = os.dup(fd)
                self._size = size
            self._cond.notify_all()

    def grew(self, size: int) -> None:
        with self._cond:
            self._size = size
            self._cond.notify_all()

    def complete(self, error: BaseException | None = None) -> None:
        with self._cond:
            if not self._done:
                self._done = True
                self._error = error if error is not None or self._fd != -1 else DownloadFailed()
            self._cond.notify_all()

    def cancel(self) -> None:
        self.cancelled = True

    def read(self, size: int = -1, /) -> bytes:
        with self._cond:
            while self._offset >= self._size and not self._done:
                self._cond.wait()
            if self._error is not None:
                raise DownloadFailed() from self._error
            fd, available = self._fd, self._size - self._offset
        if available <= 0:
            return b""
        data = os.pread(fd, available if size < 0 else min(size, available), self._offset)
        self._offset += len(data)
        return data

    def close(self) -> None:
        with self._cond:
            if self._fd != -1:
                os.close(self._fd)
                self._fd = -1


class DownloadFailed(Exception):
    """Read from a BlobArrival whose download failed (the download reports why)."""


class BlobWriter:
    """Writes a blob to its downloads/ file, hashing as it goes (see ImageStore.blob_writer)."""

    def __init__(self, fd: int, digest: str, path: Path, arrival: BlobArrival | None = None):
        # hashlib loads OpenSSL (~2 ms): imported where a blob is hashed, since `sandbox run`
        # only reads the index.
        import hashlib

        self._fd = fd
        self.digest = digest
        self.path = path
        self._hash = hashlib.sha256()
        self.size = 0
        self._arrival = arrival

    def write(self, data: bytes) -> None:
        if self._arrival is not None and self._arrival.cancelled:
            raise ImageError(f"the download of blob {self.digest} was cancelled")
        self._hash.update(data)
        self.size += len(data)
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
            if self._arrival is not None:
                self._arrival.grew(self.size)
        except OSError as e:
            if _is_full(e):
                raise _full(e, self.path, f"while writing blob {self.digest}") from e
            raise

    def finish(self) -> None:
        got = "sha256:" + self._hash.hexdigest()
        if got != self.digest:
            raise DigestError(
                f"digest mismatch for blob {self.digest}",
                context=f"expected {self.digest}, got {got} ({self.size} bytes)",
                hint="the registry or archive holds corrupt data; nothing was stored",
            )
        os.fsync(self._fd)


def userns_runner(
    mapping: IdMapping, target: Callable[[Channel], int], on_message: OnMessage
) -> int:
    """Run target as root of a user namespace with mapping (the default runner)."""
    from sandbox.rootless import userns

    return userns.run(mapping, target, on_message=on_message)


def _stderr_warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _hex(diff_id: str) -> str:
    algorithm, _, digest = diff_id.partition(":")
    if (
        algorithm != "sha256"
        or len(digest) != 64
        or not all(c in "0123456789abcdef" for c in digest)
    ):
        raise ImageError(f"malformed layer id {diff_id!r} in the image index")
    return digest


class _Pump:
    """A thread that feeds the unpacking process: each blob, decompressed as it arrives,
    into its pipe, in order (the child unpacks the layers one after the other). It closes
    every pipe when it ends, so the child never waits for input that will not come."""

    def __init__(self, sources: list[BlobArrival], pipes: list[int]):
        self._sources = sources
        self._pipes = pipes
        self._thread = threading.Thread(target=self._run, name="layer-pump", daemon=True)
        self.started = False
        self.error: BaseException | None = None
        self.digests: list[tuple[str, int]] = []  # (diff_id, size) of each blob fed in full

    def start(self) -> None:
        self.started = True
        self._thread.start()

    def join(self) -> None:
        if self.started:
            self._thread.join()

    def _run(self) -> None:
        import hashlib

        from sandbox.images import archive

        try:
            for arrival, pipe in zip(self._sources, self._pipes, strict=True):
                diff_id = hashlib.sha256()
                size = 0
                try:
                    stream = archive.decompressed(arrival)
                    while chunk := stream.read(archive.CHUNK):
                        diff_id.update(chunk)
                        size += len(chunk)
                        view = memoryview(chunk)
                        while view:
                            view = view[os.write(pipe, view) :]
                except archive.data_errors() as e:
                    raise LayerError(
                        "a layer blob is corrupt", context=archive.describe_data_error(e)
                    ) from e
                os.close(pipe)
                self._pipes[self._pipes.index(pipe)] = -1
                self.digests.append(("sha256:" + diff_id.hexdigest(), size))
        except (BrokenPipeError, DownloadFailed):
            pass  # the unpacking process or the download stopped: its error says why
        except BaseException as e:
            self.error = e
        finally:
            for pipe in self._pipes:
                if pipe != -1:
                    os.close(pipe)


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _full_disk_reported(
    method: Callable[Concatenate[ImageStore, _P], _R],
) -> Callable[Concatenate[ImageStore, _P], _R]:
    """The method, with a full disk reported as one error naming the device (_full_disk)."""

    @functools.wraps(method)
    def reported(store: ImageStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with store._full_disk():
            return method(store, *args, **kwargs)

    return reported


class ImageStore:
    """The images of one user. mapping is the containers' id mapping (layers are unpacked
    and removed inside a user namespace with it). runner and chown exist for tests: an
    in-process runner with chown=False unpacks as the calling user without a namespace."""

    def __init__(
        self,
        root: Path,
        mapping: IdMapping,
        *,
        runner: Runner | None = None,
        chown: bool = True,
        warn: Warn = _stderr_warn,
    ):
        self.root = Path(root)
        self.mapping = mapping
        self._runner = runner or userns_runner
        self._chown = chown
        self._warn = warn

    # -- paths ------------------------------------------------------------------------------

    @property
    def blobs_dir(self) -> Path:
        return self.root / "blobs" / "sha256"

    @property
    def layers_dir(self) -> Path:
        return self.root / "layers"

    def layer_dir(self, diff_id: str) -> Path:
        return self.layers_dir / _hex(diff_id)

    # -- reading ----------------------------------------------------------------------------

    def images(self) -> list[Image]:
        """Every image, in the order they were added."""
        return [self._image(record) for record in self._read_index()]

    def lookup(self, name_or_id: str) -> Image:
        """The image named name_or_id: an exact (normalised) name, a short name ('busybox'
        finds localhost/busybox:latest or docker.io/library/busybox:latest), or a unique id
        prefix of at least 3 hex digits."""
        image, _ = find_image(self.images(), name_or_id)
        return image

    def layer_paths(self, image: Image) -> list[Path]:
        """The diff/ directories of image's layers, lowest first."""
        paths = []
        for diff_id in image.layers:
            path = self.layer_dir(diff_id) / "diff"
            if not path.is_dir():
                raise ImageError(
                    f"layer {diff_id} of image {image.short_id} is missing",
                    context=str(path),
                    hint=f"remove the image (sandbox rmi -f {image.short_id}) "
                    "and import or pull it again",
                )
            paths.append(path)
        return paths

    # -- import -----------------------------------------------------------------------------

    def import_rootfs(
        self, tarball: Path, name: str | None, *, comment: str = "imported from tarball"
    ) -> Image:
        """Make an image of one layer from a rootfs tarball (plain, gzip, xz, bzip2 or zstd).

        name: "busybox" is stored as localhost/busybox:latest; None makes an unnamed image.
        The name moves from any image that had it (which may be left without names).
        """
        try:
            return self._publish_tarball(
                tarball,
                reference.local_name(name) if name else None,
                lambda diff_id, created: _image_config(diff_id, created, comment),
            )
        except LayerError as e:
            raise LayerError(f"cannot import {tarball}", context=str(e), hint=e.hint) from e

    def commit_layer(
        self,
        tarball: Path,
        *,
        base: Image | None,
        config: dict[str, Any],
        name: str | None,
        comment: str = "",
    ) -> Image:
        """A new image: base's layers plus one layer from tarball (OCI whiteouts honoured),
        with config as its runtime configuration (`sandbox commit`)."""
        stored_name = reference.local_name(name) if name else None
        base_layers = tuple(base.layers) if base is not None else ()
        machine = platform.machine()

        def make_config(diff_id: str, created: str) -> dict[str, Any]:
            return {
                "created": created,
                "architecture": _GOARCH.get(machine, machine),
                "os": "linux",
                "config": config,
                "rootfs": {"type": "layers", "diff_ids": [*base_layers, diff_id]},
                "history": [
                    {"created": created, "created_by": "sandbox commit", "comment": comment}
                ],
            }

        return self._publish_tarball(
            tarball,
            stored_name,
            make_config,
            base_layers=base_layers,
            base_size=base.size if base is not None else 0,
            whiteouts=True,
        )

    def _publish_tarball(
        self,
        tarball: Path,
        stored_name: str | None,
        make_config: Callable[[str, str], dict[str, Any]],
        *,
        base_layers: tuple[str, ...] = (),
        base_size: int = 0,
        whiteouts: bool = False,
    ) -> Image:
        """Unpack tarball as a new layer in a fresh layers/.tmp-* (held locked) and index an
        image of base_layers plus it."""
        fd = _open_tarball(tarball)
        try:
            self._ensure_dirs()
            with self._locked(), self._full_disk():
                self._cleanup_tmp()
                tmp, tmp_lock = self._new_tmp()
            try:
                with self._full_disk():
                    return self._add_layer_image(
                        fd,
                        tmp,
                        stored_name,
                        make_config,
                        base_layers=base_layers,
                        base_size=base_size,
                        whiteouts=whiteouts,
                    )
            finally:
                os.close(tmp_lock)
        finally:
            os.close(fd)

    def _add_layer_image(
        self,
        fd: int,
        tmp: Path,
        stored_name: str | None,
        make_config: Callable[[str, str], dict[str, Any]],
        *,
        base_layers: tuple[str, ...] = (),
        base_size: int = 0,
        whiteouts: bool = False,
    ) -> Image:
        """Unpack one layer into tmp, publish it and index an image of base_layers + it."""
        import hashlib

        placed = False
        try:
            result = self._unpack_many([(fd, tmp)], whiteouts=whiteouts)[0]
            diff_id, size = result["diff_id"], int(result["size"])
            created = now_rfc3339()
            _write_json(tmp / "layer.json", {"diff_id": diff_id, "size": size, "created": created})
            config = make_config(diff_id, created)
            config_bytes = _canonical(config)
            image_id = hashlib.sha256(config_bytes).hexdigest()
            with self._locked():
                final = self.layer_dir(diff_id)
                if not final.exists():
                    os.rename(tmp, final)
                    _fsync_dir(self.layers_dir)
                    placed = True
                _write_atomic(self.blobs_dir / image_id, config_bytes)
                records = self._read_index()
                for record in records:
                    if stored_name in record["names"]:
                        record["names"].remove(stored_name)
                records = [r for r in records if r["id"] != image_id]
                records.append(
                    {
                        "id": image_id,
                        "names": [stored_name] if stored_name else [],
                        "layers": [*base_layers, diff_id],
                        "created": created,
                        "size": base_size + size,
                    }
                )
                self._write_index(records)
        except BaseException:
            if not placed:
                self._discard_quietly([tmp])
            raise
        if not placed:
            # The layer was already in the store (the same tarball imported before).
            self._discard_quietly([tmp])
        return self._image(records[-1])

    def _unpack_stored(self, jobs: list[tuple[str, Path]]) -> list[dict[str, Any]]:
        """Unpack each (stored layer blob, layers/.tmp-* dir); results as _unpack_many's."""
        if not jobs:
            return []
        fds: list[int] = []
        try:
            for blob, _ in jobs:
                fds.append(os.open(self.blob_path(blob), os.O_RDONLY | os.O_CLOEXEC))
            return self._unpack_many(
                [(fd, tmp) for fd, (_, tmp) in zip(fds, jobs, strict=True)], whiteouts=True
            )
        except FileNotFoundError as e:
            raise ImageError(
                "a layer blob vanished before it was unpacked",
                context=str(e.filename),
                hint="pull the image again",
            ) from e
        finally:
            for fd in fds:
                os.close(fd)

    def _unpack_streamed(self, jobs: list[tuple[str, Path]], fetch: Fetch) -> list[dict[str, Any]]:
        """Unpack each (layer blob, layers/.tmp-* dir) while fetch downloads the blobs.

        The order keeps the single-thread rule: the unpacking process is forked first; when
        it asks for its input, fetch starts the download threads and a pump thread feeds each
        blob, decompressed as it arrives, through a pipe (the unpacking process reads a plain
        tar and computes the diff_id as for a stored blob). Every thread has ended when this
        returns. Errors, most telling first: the download's (a digest mismatch), the
        decompression's, the unpacking's (which sees a truncated tar when the others stop)."""
        arrivals = {blob: BlobArrival() for blob, _ in jobs}
        read_ends: list[int] = []
        write_ends: list[int] = []
        pump = _Pump([arrivals[blob] for blob, _ in jobs], write_ends)
        try:
            for _ in jobs:
                r, w = os.pipe2(os.O_CLOEXEC)
                read_ends.append(r)
                write_ends.append(w)
                with contextlib.suppress(OSError):  # a bigger pipe: fewer wake-ups
                    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 1 << 20)
            inputs = [(r, tmp) for r, (_, tmp) in zip(read_ends, jobs, strict=True)]
            waits: list[Callable[[], None]] = []

            def on_feed() -> None:
                while read_ends:  # the child has its copies
                    os.close(read_ends.pop())
                try:
                    waits.append(fetch(arrivals))
                except BaseException:
                    for arrival in arrivals.values():  # none may keep the pump waiting
                        arrival.cancel()
                        arrival.complete(DownloadFailed())
                    raise
                finally:
                    pump.start()  # without downloads it ends at once, closing every pipe

            unpack_error: BaseException | None = None
            results: list[dict[str, Any]] = []
            try:
                results = self._unpack_many(
                    inputs,
                    whiteouts=True,
                    child_closes=list(write_ends),
                    on_feed=on_feed,
                    digest=False,  # the pump hashes what it feeds, on the other core
                )
            except BaseException as e:
                unpack_error = e
                if not isinstance(e, SandboxError):  # an interrupt: stop downloading
                    for arrival in arrivals.values():
                        arrival.cancel()
            fetch_error: BaseException | None = None
            try:
                if waits:
                    waits[0]()
            except BaseException as e:
                fetch_error = e
            finally:
                for arrival in arrivals.values():
                    arrival.complete(DownloadFailed())  # unblocks the pump; no-op when done
                pump.join()
            if unpack_error is not None and not isinstance(unpack_error, SandboxError):
                raise unpack_error  # an interrupt stays one (the downloads were cancelled)
            for error in (fetch_error, pump.error, unpack_error):
                if error is not None:
                    raise error
            for result, (diff_id, size) in zip(results, pump.digests, strict=True):
                if int(result["size"]) != size:
                    raise LayerError(
                        "the unpacking process did not read the whole layer",
                        context=f"{result['size']} of {size} bytes",
                    )
                result["diff_id"] = diff_id
            return results
        finally:
            for fd in read_ends:
                os.close(fd)
            if not pump.started:
                for fd in write_ends:
                    os.close(fd)
            for arrival in arrivals.values():
                arrival.close()

    def _unpack_many(
        self,
        jobs: list[tuple[int, Path]],
        *,
        whiteouts: bool,
        child_closes: list[int] | None = None,
        on_feed: Callable[[], None] | None = None,
        digest: bool = True,
    ) -> list[dict[str, Any]]:
        """Unpack each (tarball fd, layers/.tmp-* dir) in one user-namespace child (one fork
        for all layers of an image). whiteouts: OCI whiteouts become overlay whiteouts.
        child_closes: fds the child closes first (the write ends of its input pipes);
        on_feed: called in this process when the child is ready for its input; digest=False:
        the caller hashes the input (results then have an empty diff_id)."""
        from sandbox.images import unpack

        options = unpack.UnpackOptions(
            chown=self._chown,
            mapping=self.mapping,
            ignore_unmapped=self.mapping.single,
            whiteouts=whiteouts,
        )

        def target(channel: Channel) -> int:
            # Runs as root of the user namespace: files get the archive's owners, mapped.
            for fd in child_closes or ():
                os.close(fd)  # else a pipe never ends: this process would hold a writer
            if on_feed is not None:
                channel.send("feed")
            done = []
            with self._full_disk():  # here, in the child: the parent gets a SandboxError
                for fd, tmp in jobs:
                    diff = tmp / "diff"
                    os.mkdir(diff, 0o755)
                    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
                    dest = os.open(diff, flags)
                    try:
                        done.append(unpack.unpack_file(fd, dest, options, digest=digest))
                    finally:
                        os.close(dest)
                # Everything on disk before the rename publishes the layer (os.sync: Python
                # has no syncfs; one call instead of an fsync per file).
                os.sync()
            for result in done:
                channel.send(
                    "result",
                    diff_id=result.diff_id,
                    size=result.size,
                    report=result.report.to_json(),
                )
            return 0

        results: list[dict[str, Any]] = []

        def on_message(message: dict[str, Any], fds: list[int]) -> None:
            for extra in fds:
                os.close(extra)
            if message.get("type") == "result":
                results.append(message)
            elif message.get("type") == "feed" and on_feed is not None:
                on_feed()

        code = self._runner(self.mapping, target, on_message)
        if len(results) != len(jobs):
            raise LayerError(
                "the unpacking process ended without a result", context=f"exit status {code}"
            )
        unmapped = 0
        for result in results:
            report = unpack.UnpackReport.from_json(result["report"])
            for line in report.warnings():
                self._warn(line)
            unmapped += report.unmapped
        if unmapped:
            self._warn(
                f"{unmapped} files owned by unmapped ids now belong to root "
                f"(a single id mapping is in use: {self.mapping.single_reason})"
            )
        return results

    def tag(self, name_or_id: str, new_name: str) -> Image:
        """Add new_name (normalised like an import's) to an image; it moves from any other."""
        stored = reference.local_name(new_name)
        self._ensure_dirs()
        with self._locked():
            records = self._read_index()
            image, _ = find_image([self._image(r, config=False) for r in records], name_or_id)
            for record in records:
                if stored in record["names"] and record["id"] != image.id:
                    record["names"].remove(stored)
                if record["id"] == image.id and stored not in record["names"]:
                    record["names"].append(stored)
            self._write_index(records)
        return self.lookup(image.id)

    # -- blobs and registry images ------------------------------------------------------

    @property
    def downloads_dir(self) -> Path:
        return self.root / "downloads"

    def blob_path(self, digest: str) -> Path:
        return self.blobs_dir / _hex(digest)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    @contextlib.contextmanager
    def blob_writer(
        self, digest: str, arrival: BlobArrival | None = None
    ) -> Iterator[BlobWriter | None]:
        """Write the blob named digest: yields None when it is already stored, else a writer
        that hashes while writing. On a clean exit the content is verified (DigestError
        names the blob, the expected and the actual digest), fsync'ed and renamed into place.

        downloads/<hex> is flock'ed for the duration, so two processes pulling the same blob
        download it once: the second waits and then finds it stored. What a killed writer
        left there is truncated and written again (no lock is held on it any more).
        arrival, when given, can read the blob while it is written; it is completed (with
        the error, if any) when this ends."""
        try:
            with self._blob_writer(digest, arrival) as writer:
                yield writer
        except BaseException as e:
            if arrival is not None:
                arrival.complete(e)
            raise
        if arrival is not None:
            arrival.complete()

    @contextlib.contextmanager
    def _blob_writer(self, digest: str, arrival: BlobArrival | None) -> Iterator[BlobWriter | None]:
        hex_ = _hex(digest)
        final = self.blobs_dir / hex_
        self._ensure_dirs()
        if final.is_file():
            self._attach_stored(final, arrival)
            yield None
            return
        partial = self.downloads_dir / hex_
        while True:
            fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(partial).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the previous holder renamed or removed it: open the new one
        try:
            if final.is_file():
                self._attach_stored(final, arrival)
                yield None
                return
            os.ftruncate(fd, 0)
            if arrival is not None:
                arrival.attach(fd)
            writer = BlobWriter(fd, digest, partial, arrival)
            try:
                yield writer
                writer.finish()
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(partial)
                raise
            os.rename(partial, final)
            _fsync_dir(self.blobs_dir)
        finally:
            os.close(fd)

    @staticmethod
    def _attach_stored(path: Path, arrival: BlobArrival | None) -> None:
        if arrival is not None:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                arrival.attach(fd, os.fstat(fd).st_size)
            finally:
                os.close(fd)

    def write_blob(self, data: bytes, digest: str | None = None) -> str:
        """Store data as a blob (verified against digest when given); returns its digest."""
        import hashlib

        digest = digest or "sha256:" + hashlib.sha256(data).hexdigest()
        with self.blob_writer(digest) as writer:
            if writer is not None:
                writer.write(data)
        return digest

    def discard_blobs(self, digests: list[str]) -> None:
        """Delete blobs that no image in the index refers to (what a failed pull fetched)."""
        self._ensure_dirs()
        with self._locked():
            used = self._blobs_in_use(self._read_index())
            for digest in digests:
                if digest not in used:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.blob_path(digest))

    @_full_disk_reported
    def add_image(
        self,
        *,
        manifest: bytes,
        manifest_type: str,
        config: bytes,
        layer_blobs: list[str],
        names: list[str],
        repo_digest: str | None = None,
        fetch: Fetch | None = None,
    ) -> Image:
        """Add an image whose layer blobs are in the blob store (a load), or arrive there
        through fetch (a pull: see Fetch), in which case each new layer is unpacked while its
        blob downloads (_unpack_streamed) and published only once the blob's digest is
        verified.

        Each layer not yet in the store is unpacked once (OCI whiteouts honoured) and checked
        against the config's diff_id; every new layer is renamed into place in the same
        storage.lock hold that adds the image to the index (cleanup() never sees it unused).
        layers/.lock-<hex> is held while a layer is unpacked and published, so a concurrent
        pull of an image with the same layer waits and then uses ours. The image id is the
        config's digest, as podman's; names move from any image that had them."""
        import hashlib

        from sandbox.images import manifest as manifests

        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        try:
            config_doc = json.loads(config)
        except ValueError as e:
            raise ImageError("the image config is not JSON", context=str(e)) from e
        diff_ids = manifests.diff_ids(config_doc, f"image config {config_digest}")
        if len(diff_ids) != len(layer_blobs):
            raise ImageError(
                f"image config {config_digest} lists {len(diff_ids)} layers, "
                f"the manifest {len(layer_blobs)}"
            )
        self._ensure_dirs()
        stored_names = [str(reference.normalize(n)) for n in names]
        locks: list[int] = []
        lock_paths: list[Path] = []
        tmps: list[Path] = []
        placed: set[Path] = set()
        try:
            # Sorted, so two pulls that share layers take their locks in the same order.
            for diff_hex in sorted({_hex(d) for d in diff_ids}):
                path = self.layers_dir / f"{LAYER_LOCK_PREFIX}{diff_hex}"
                locks.append(_flock_file(path))
                lock_paths.append(path)
            with self._locked():
                self._cleanup_tmp()
                jobs: list[tuple[str, str, Path]] = []
                seen: set[str] = set()
                for diff_id, blob in zip(diff_ids, layer_blobs, strict=True):
                    if self.layer_dir(diff_id).exists() or diff_id in seen:
                        continue
                    seen.add(diff_id)
                    tmp, tmp_lock = self._new_tmp()
                    locks.append(tmp_lock)
                    tmps.append(tmp)
                    jobs.append((diff_id, blob, tmp))
            if fetch is not None and jobs and self._runner is userns_runner:
                results = self._unpack_streamed([(blob, tmp) for _, blob, tmp in jobs], fetch)
            else:
                if fetch is not None:
                    # Nothing to unpack, or an in-process runner (tests), which runs the
                    # unpacking before it reads a message: download first.
                    fetch({})()
                results = self._unpack_stored([(blob, tmp) for _, blob, tmp in jobs])
            sizes: dict[str, int] = {}
            for (diff_id, blob, tmp), result in zip(jobs, results, strict=True):
                if result["diff_id"] != diff_id:
                    raise DigestError(
                        f"layer {blob} does not unpack to the layer the config names",
                        context=f"expected diff_id {diff_id}, got {result['diff_id']}",
                        hint="the image is corrupt or was tampered with",
                    )
                sizes[diff_id] = int(result["size"])
                _write_json(
                    tmp / "layer.json",
                    {"diff_id": diff_id, "size": sizes[diff_id], "created": now_rfc3339()},
                )
            with self._locked():
                for diff_id, _, tmp in jobs:
                    os.rename(tmp, self.layer_dir(diff_id))
                    placed.add(tmp)
                if jobs:
                    _fsync_dir(self.layers_dir)
                for diff_id in diff_ids:
                    if not self.layer_dir(diff_id).is_dir():
                        raise ImageError(
                            f"layer {diff_id} was removed while the image was being added",
                            hint="pull or load the image again",
                        )
                for blob in layer_blobs:
                    if not self.has_blob(blob):
                        raise ImageError(
                            f"blob {blob} was removed while the image was being added",
                            hint="pull or load the image again",
                        )
                image_id = _hex(config_digest)
                _write_atomic(self.blobs_dir / image_id, config)
                if manifest_digest != config_digest:
                    _write_atomic(self.blob_path(manifest_digest), manifest)
                records = self._read_index()
                old = next((r for r in records if r["id"] == image_id), None)
                kept_names = list(old["names"]) if old else []
                repo_digests = list(old.get("repo_digests", [])) if old else []
                if repo_digest and repo_digest not in repo_digests:
                    repo_digests.append(repo_digest)
                for record in records:
                    for name in stored_names:
                        if name in record["names"] and record["id"] != image_id:
                            record["names"].remove(name)
                for name in stored_names:
                    if name not in kept_names:
                        kept_names.append(name)
                records = [r for r in records if r["id"] != image_id]
                size = sum(sizes.get(d) or _layer_size(self.layer_dir(d)) for d in diff_ids)
                records.append(
                    {
                        "id": image_id,
                        "names": kept_names,
                        "layers": diff_ids,
                        "created": str(config_doc.get("created") or now_rfc3339()),
                        "size": size,
                        "digest": manifest_digest,
                        "manifest_type": manifest_type,
                        "repo_digests": repo_digests,
                        "blobs": list(layer_blobs),
                    }
                )
                self._write_index(records)
        except BaseException:
            leftovers = [t for t in tmps if t not in placed]
            if leftovers:
                self._discard_quietly(leftovers)
            raise
        finally:
            # The lock files go, so a failed pull or load leaves no trace and a good one no
            # litter (unlinked while held; _flock_file makes a waiter take a new file).
            for path in lock_paths:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            for lock in locks:
                os.close(lock)
        return self._image(records[-1])

    def manifest_bytes(self, image: Image) -> tuple[bytes, str]:
        """The stored manifest of a pulled or loaded image and its media type."""
        if image.digest is None:
            raise ImageError(
                f"image {image.short_id} has no manifest (it was imported from a rootfs tarball)",
                hint="save and push work on pulled or loaded images",
            )
        record = next(r for r in self._read_index() if r["id"] == image.id)
        try:
            return self.blob_path(image.digest).read_bytes(), str(record.get("manifest_type"))
        except OSError as e:
            raise ImageError(
                f"the manifest of image {image.short_id} is missing", context=str(e)
            ) from e

    def _blobs_in_use(self, records: list[dict[str, Any]]) -> set[str]:
        used: set[str] = set()
        for record in records:
            used.add("sha256:" + record["id"])
            if record.get("digest"):
                used.add(record["digest"])
            used.update(record.get("blobs", ()))
        return used

    # -- removal ----------------------------------------------------------------------------

    def remove(self, name_or_id: str, *, force: bool = False) -> tuple[list[str], list[str]]:
        """Untag name_or_id when the image has other names, else delete the image and every
        layer no other image uses. Returns (untagged names, deleted image ids).

        An image named by id that has several names is deleted only with force (as podman).
        """
        self._ensure_dirs()
        with self._locked():
            self._cleanup_tmp()
            records = self._read_index()
            images = [self._image(r, config=False) for r in records]
            image, matched = find_image(images, name_or_id)
            record = next(r for r in records if r["id"] == image.id)
            if matched is not None and len(record["names"]) > 1:
                record["names"].remove(matched)
                self._write_index(records)
                return [matched], []
            if matched is None and len(record["names"]) > 1 and not force:
                raise UsageError(
                    f"image {image.short_id} has several names: {', '.join(record['names'])}",
                    hint="remove the names one by one, or use --force",
                )
            records.remove(record)
            # Index first: from here on no image refers to the layers we are about to remove.
            self._write_index(records)
            used_blobs = self._blobs_in_use(records)
            for blob in ["sha256:" + image.id, record.get("digest"), *record.get("blobs", [])]:
                if blob and blob not in used_blobs:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.blob_path(blob))
            in_use = {diff_id for r in records for diff_id in r["layers"]}
            doomed = []
            for diff_id in image.layers:
                if diff_id in in_use:
                    continue
                # Renamed to .tmp- first: a half-deleted layer must never look like a layer.
                tmp = self.layers_dir / (TMP_PREFIX + os.urandom(8).hex())
                try:
                    os.rename(self.layer_dir(diff_id), tmp)
                except FileNotFoundError:
                    continue
                doomed.append(tmp)
                self._drop_layer_lock(_hex(diff_id))
            if doomed:
                _fsync_dir(self.layers_dir)
                self._discard(doomed)
            return list(record["names"]), [image.id]

    def _drop_layer_lock(self, diff_hex: str) -> None:
        """Delete the lock file of a layer that is gone, unless someone holds it (a pull of
        the same layer waits on it: it then takes the file's successor, see _flock_file)."""
        path = self.layers_dir / f"{LAYER_LOCK_PREFIX}{diff_hex}"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                os.unlink(path)  # while held, as add_image's failure path does
        except OSError:
            pass  # held (BlockingIOError), or gone meanwhile
        finally:
            os.close(fd)

    def cleanup(self) -> None:
        """Delete what killed imports and removals left (.tmp-*) and layers no image uses."""
        self._ensure_dirs()
        with self._locked():
            self._cleanup_tmp()
            in_use = {_hex(d) for r in self._read_index() for d in r["layers"]}
            orphans = []
            for entry in os.scandir(self.layers_dir):
                if entry.name.startswith((TMP_PREFIX, LAYER_LOCK_PREFIX)) or entry.name in in_use:
                    continue
                tmp = self.layers_dir / (TMP_PREFIX + os.urandom(8).hex())
                os.rename(entry.path, tmp)
                orphans.append(tmp)
            if orphans:
                self._discard(orphans)

    # -- internals --------------------------------------------------------------------------

    def _ensure_dirs(self) -> None:
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.blobs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.layers_dir.mkdir(mode=0o700, exist_ok=True)
            self.downloads_dir.mkdir(mode=0o700, exist_ok=True)
        except OSError as e:
            raise ImageError(
                f"cannot create the image store {self.root}",
                context=e.strerror,
                hint="check the permissions, or set data_root in config.yaml",
            ) from e

    @contextlib.contextmanager
    def _full_disk(self) -> Iterator[None]:
        """ENOSPC or EDQUOT in what is inside: one ImageError naming the store's device. The
        code inside cleans up after itself on the way out (except BaseException: ...)."""
        try:
            yield
        except OSError as e:
            if not _is_full(e):
                raise
            raise _full(e, self.root, f"while adding to the image store {self.root}") from e

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _new_tmp(self) -> tuple[Path, int]:
        """A new layers/.tmp-* directory, flock'ed so no cleanup removes it while in use."""
        path = self.layers_dir / (TMP_PREFIX + os.urandom(8).hex())
        os.mkdir(path, 0o700)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return path, fd

    def _cleanup_tmp(self) -> None:
        """Remove the .tmp-* entries of dead operations (the caller holds the store lock)."""
        for directory in (self.root, self.blobs_dir):
            for entry in os.scandir(directory):
                # Files are only written under the store lock, which we hold: all are dead.
                if entry.name.startswith(TMP_PREFIX) and entry.is_file(follow_symlinks=False):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
        dead: list[Path] = []
        locks: list[int] = []
        try:
            for entry in os.scandir(self.layers_dir):
                if not entry.name.startswith(TMP_PREFIX):
                    continue
                try:
                    fd = os.open(
                        entry.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
                    )
                except OSError:
                    dead.append(Path(entry.path))
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)  # an import in progress holds it
                    continue
                locks.append(fd)
                dead.append(Path(entry.path))
            if dead:
                self._discard(dead)
        finally:
            for fd in locks:
                os.close(fd)

    def _discard(self, paths: list[Path]) -> None:
        """Delete paths inside the user namespace: their files belong to subordinate ids."""

        def target(channel: Channel) -> int:
            for path in paths:
                _rmtree(path)
            return 0

        self._runner(self.mapping, target, _close_fds)

    def _discard_quietly(self, paths: list[Path]) -> None:
        """_discard, leaving what it cannot delete to the next cleanup (.tmp-* names)."""
        try:
            self._discard(paths)
        except (SandboxError, OSError) as e:
            self._warn(f"left {', '.join(p.name for p in paths)} for the next cleanup: {e}")

    def _read_index(self) -> list[dict[str, Any]]:
        path = self.root / INDEX
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as e:
            raise ImageError(
                f"cannot read the image index {path}",
                context=getattr(e, "strerror", None) or str(e),
            ) from e
        try:
            records = data["images"]
            for record in records:
                for key, kind in (
                    ("id", str),
                    ("names", list),
                    ("layers", list),
                    ("created", str),
                    ("size", int),
                ):
                    if not isinstance(record[key], kind):
                        raise TypeError(key)
        except (KeyError, TypeError) as e:
            raise ImageError(
                f"the image index {path} is malformed", context=f"bad or missing field {e}"
            ) from e
        return list(records)

    def _write_index(self, records: list[dict[str, Any]]) -> None:
        _write_atomic(self.root / INDEX, json.dumps({"images": records}, indent=1).encode())

    def _image(self, record: dict[str, Any], *, config: bool = True) -> Image:
        image_config: dict[str, Any] = {}
        if config:
            try:
                blob = json.loads((self.blobs_dir / record["id"]).read_bytes())
                image_config = dict(blob.get("config") or {})
            except (OSError, ValueError, AttributeError, TypeError):
                image_config = {}
        return Image(
            id=record["id"],
            names=tuple(record["names"]),
            layers=tuple(record["layers"]),
            created=record["created"],
            size=int(record["size"]),
            config=image_config,
            digest=record.get("digest"),
            repo_digests=tuple(record.get("repo_digests", ())),
            blobs=tuple(record.get("blobs", ())),
        )


def find_image(images: list[Image], text: str) -> tuple[Image, str | None]:
    """The image text names among images: (image, the name that matched, or None when it
    matched by id). Order: the exact normalised name; for a short name, the images whose
    repository ends with "/NAME" and whose tag is the same (an error when several do); a
    digest equal to an id; a unique id prefix of 3+ hex digits."""
    tried: list[str] = []
    parse_error: UsageError | None = None
    ref: reference.Reference | None = None
    try:
        ref = reference.parse(text)
    except UsageError as e:
        parse_error = e
    if text.startswith("sha256:"):
        ref = None  # an id, not a repository named "sha256"
    if ref is not None and ref.digest is None:
        full = str(reference.normalize(text))
        tried.append(full)
        for image in images:
            if full in image.names:
                return image, full
        if ref.short:
            tag = ref.tag or reference.DEFAULT_TAG
            tried.append(f"*/{ref.path}:{tag}")
            found = [
                (image, name)
                for image in images
                for name in image.names
                if reference.matches_short(name, ref)
            ]
            if len({image.id for image, _ in found}) == 1:
                return found[0]
            if found:
                names = ", ".join(name for _, name in found)
                raise ImageError(
                    f"short name {text!r} matches several images: {names}", hint="use the full name"
                )
    elif ref is not None and ref.digest is not None:
        digest_hex = ref.digest.partition(":")[2]
        tried.append(ref.digest)
        for image in images:
            if image.id == digest_hex:
                return image, None
    prefix = reference.id_prefix(text)
    if prefix is not None:
        tried.append(f"id {prefix}...")
        candidates = [image for image in images if image.id.startswith(prefix)]
        if len(candidates) == 1:
            return candidates[0], None
        if candidates:
            ids = ", ".join(image.short_id for image in candidates)
            raise ImageError(
                f"image id prefix {prefix!r} is ambiguous",
                context=f"matches {ids}",
                hint="give more digits of the id",
            )
    if ref is None and prefix is None and parse_error is not None:
        raise parse_error
    raise ImageNotFound(
        f"image {text!r} not found", context=f"tried {', '.join(tried)}", hint=NOT_FOUND_HINT
    )


def _is_full(error: OSError) -> bool:
    from sandbox.rootless import filesystems  # only on an error path

    return filesystems.is_full(error)


def _full(error: OSError, path: Path, context: str) -> ImageError:
    """The error for a full disk (or quota) where path is: it names the device."""
    from sandbox.rootless import filesystems

    return ImageError(filesystems.full_message(error, path), context=context, hint=FULL_HINT)


def _flock_file(path: Path) -> int:
    """An fd of path (created if missing) with an exclusive flock on it. Retried when the
    holder before us unlinked the file, so every locker holds the file that path names."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _open_tarball(tarball: Path) -> int:
    try:
        fd = os.open(tarball, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise ImageError(f"cannot import {tarball}", context=e.strerror) from e
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ImageError(
                f"cannot import {tarball}",
                context="it is a directory",
                hint="give a tar archive of a root filesystem (tar -C DIR -cf rootfs.tar .)",
            )
        from sandbox.images import archive

        # Checked here, before any namespace work, so a bad file fails fast and leaves nothing.
        archive.detect(os.pread(fd, 512, 0))
    except OSError as e:
        os.close(fd)
        raise ImageError(f"cannot import {tarball}", context=e.strerror) from e
    except SandboxError:
        os.close(fd)
        raise
    return fd


def _image_config(diff_id: str, created: str, comment: str) -> dict[str, Any]:
    """An OCI image config for a one-layer image imported from a rootfs tarball.

    Like podman import: PATH set, no Cmd (the user names the command at run time)."""
    machine = platform.machine()
    return {
        "created": created,
        "architecture": _GOARCH.get(machine, machine),
        "os": "linux",
        "config": {"Env": [DEFAULT_PATH]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": "sandbox image import", "comment": comment}],
    }


def _layer_size(layer: Path) -> int:
    try:
        return int(json.loads((layer / "layer.json").read_bytes())["size"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _write_json(path: Path, value: Any) -> None:
    _write_atomic(path, json.dumps(value, indent=1).encode())


def _write_atomic(path: Path, data: bytes) -> None:
    """Write path so a crash leaves the old or the new content, never a mix."""
    tmp = path.with_name(TMP_PREFIX + path.name + "-" + os.urandom(4).hex())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rmtree(path: Path) -> None:
    def onerror(function: Any, failed: str, info: Any) -> None:
        error = info[1]
        if isinstance(error, FileNotFoundError):
            return
        if isinstance(error, OSError) and error.errno == errno.ENOTDIR:
            os.unlink(failed)
            return
        raise error

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, onerror=onerror)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _close_fds(message: dict[str, Any], fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
