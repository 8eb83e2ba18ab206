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
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import hashlib
import json
import os
import platform
import secrets
import shutil
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sandbox.errors import ImageError, ImageNotFound, LayerError, SandboxError, UsageError
from sandbox.images import reference
from sandbox.rootless.channel import Channel
from sandbox.rootless.idmap import IdMapping

INDEX = "images.json"
LOCK = "storage.lock"
TMP_PREFIX = ".tmp-"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NOT_FOUND_HINT = "sandbox images lists local images; import one with 'sandbox image import'"

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


@dataclasses.dataclass(frozen=True)
class Image:
    id: str  # 64 hex, sha256 of the config blob
    names: tuple[str, ...]  # normalised, e.g. "localhost/busybox:latest"
    layers: tuple[str, ...]  # diff_ids "sha256:<hex>", lowest first
    created: str  # RFC3339
    size: int
    config: dict[str, Any]  # the OCI image config's "config" object (Env, Cmd, ...)

    @property
    def short_id(self) -> str:
        return self.id[:12]


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
        stored_name = reference.local_name(name) if name else None
        try:
            fd = _open_tarball(tarball)
            try:
                self._ensure_dirs()
                with self._locked():
                    self._cleanup_tmp()
                    tmp, tmp_lock = self._new_tmp()
                try:
                    return self._import(fd, tmp, stored_name, comment)
                finally:
                    os.close(tmp_lock)
            finally:
                os.close(fd)
        except LayerError as e:
            raise LayerError(f"cannot import {tarball}", context=str(e), hint=e.hint) from e

    def _import(self, fd: int, tmp: Path, stored_name: str | None, comment: str) -> Image:
        placed = False
        try:
            result = self._unpack(fd, tmp)
            diff_id, size = result["diff_id"], int(result["size"])
            created = now_rfc3339()
            _write_json(tmp / "layer.json", {"diff_id": diff_id, "size": size, "created": created})
            config = _image_config(diff_id, created, comment)
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
                        "layers": [diff_id],
                        "created": created,
                        "size": size,
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

    def _unpack(self, fd: int, tmp: Path) -> dict[str, Any]:
        from sandbox.images import unpack

        options = unpack.UnpackOptions(
            chown=self._chown, mapping=self.mapping, ignore_unmapped=self.mapping.single
        )

        def target(channel: Channel) -> int:
            # Runs as root of the user namespace: files get the archive's owners, mapped.
            diff = tmp / "diff"
            os.mkdir(diff, 0o755)
            dest = os.open(diff, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                done = unpack.unpack_file(fd, dest, options)
            finally:
                os.close(dest)
            # Everything on disk before the rename publishes the layer (os.sync: Python has
            # no syncfs; one call instead of an fsync per file).
            os.sync()
            channel.send(
                "result", diff_id=done.diff_id, size=done.size, report=done.report.to_json()
            )
            return 0

        results: list[dict[str, Any]] = []

        def on_message(message: dict[str, Any], fds: list[int]) -> None:
            for extra in fds:
                os.close(extra)
            if message.get("type") == "result":
                results.append(message)

        code = self._runner(self.mapping, target, on_message)
        if not results:
            raise LayerError(
                "the unpacking process ended without a result", context=f"exit status {code}"
            )
        report = unpack.UnpackReport.from_json(results[0]["report"])
        for line in report.warnings():
            self._warn(line)
        if report.unmapped:
            self._warn(
                f"{report.unmapped} files owned by unmapped ids now belong to root "
                f"(a single id mapping is in use: {self.mapping.single_reason})"
            )
        return results[0]

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
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.blobs_dir / image.id)
            in_use = {diff_id for r in records for diff_id in r["layers"]}
            doomed = []
            for diff_id in image.layers:
                if diff_id in in_use:
                    continue
                # Renamed to .tmp- first: a half-deleted layer must never look like a layer.
                tmp = self.layers_dir / (TMP_PREFIX + secrets.token_hex(8))
                try:
                    os.rename(self.layer_dir(diff_id), tmp)
                except FileNotFoundError:
                    continue
                doomed.append(tmp)
            if doomed:
                _fsync_dir(self.layers_dir)
                self._discard(doomed)
            return list(record["names"]), [image.id]

    def cleanup(self) -> None:
        """Delete what killed imports and removals left (.tmp-*) and layers no image uses."""
        self._ensure_dirs()
        with self._locked():
            self._cleanup_tmp()
            in_use = {_hex(d) for r in self._read_index() for d in r["layers"]}
            orphans = []
            for entry in os.scandir(self.layers_dir):
                if entry.name.startswith(TMP_PREFIX) or entry.name in in_use:
                    continue
                tmp = self.layers_dir / (TMP_PREFIX + secrets.token_hex(8))
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
        except OSError as e:
            raise ImageError(
                f"cannot create the image store {self.root}",
                context=e.strerror,
                hint="check the permissions, or set data_root in config.yaml",
            ) from e

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
        path = self.layers_dir / (TMP_PREFIX + secrets.token_hex(8))
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


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _write_json(path: Path, value: Any) -> None:
    _write_atomic(path, json.dumps(value, indent=1).encode())


def _write_atomic(path: Path, data: bytes) -> None:
    """Write path so a crash leaves the old or the new content, never a mix."""
    tmp = path.with_name(TMP_PREFIX + path.name + "-" + secrets.token_hex(4))
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
