"""Safe unpacking of a (hostile) layer tarball into a layer directory.

The rules, which charliecloud and containers/storage follow in spirit:
  * Every filesystem operation is relative to a directory fd. An entry's parent directory is
    opened with openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS), so symlinks already in the
    layer resolve as if the layer directory were "/": nothing outside it can be created, changed
    or read, whatever "../" or absolute symlinks the archive carries.
  * The final component is never followed: an existing non-directory is unlinked first, files
    are created O_CREAT|O_EXCL|O_NOFOLLOW, and chown/chmod/utime go through the fd we created
    (or the *at call with AT_SYMLINK_NOFOLLOW for symlinks, fifos and whiteouts; symlinks are
    never chmod'ed).
  * Names are bytes (tarfile decodes with surrogateescape; we encode back), leading "/" and
    "./" are stripped, and entries whose ".." would climb above the root are skipped.
  * Directory owners, modes and times are applied after every entry, deepest first, so a
    read-only directory in the archive does not stop its children from being created.
  * Hard links resolve their target with the same in-root rule and link a symlink itself.
    Device nodes are skipped (a user namespace cannot create them; /dev is made at run time),
    except the 0:0 character device, which is an overlay whiteout. FIFOs are created.
  * With whiteouts=True (registry layers), ".wh.NAME" becomes an overlay whiteout (char 0:0
    NAME) and ".wh..wh..opq" marks its directory opaque (xattr user.overlay.opaque=y, as the
    overlay "userxattr" mount option inside a user namespace expects).
  * Data is streamed in bounded chunks; runs of zero bytes become holes (sparse files stay
    sparse). ENOSPC is a clean LayerError; the caller discards the half-written layer.

Few syscalls per entry (a layer has thousands): entries are created first and cleared only
when the name is taken (EEXIST), the parent's fd is kept while consecutive entries share it
(dropped on any removal or whiteout, which could change what the path resolves to), files
are created with their final permission bits, and chown is skipped when the owner the kernel
gave the new file is already the archive's.

Run it as root of a user namespace with the container's mapping (options.chown) so every file
gets the owner the archive recorded, as seen from inside the container; or with chown=False as
any user (unit tests), where everything belongs to the caller.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sandbox.errors import LayerError
from sandbox.images import archive
from sandbox.rootless import syscalls
from sandbox.rootless.idmap import IdMapping

CHUNK = 1 << 20
_ZEROS = bytes(CHUNK)
_RESOLVE = syscalls.RESOLVE_IN_ROOT | syscalls.RESOLVE_NO_MAGICLINKS
_WHITEOUT_PREFIX = b".wh."
_OPAQUE = b".wh..wh..opq"
OPAQUE_XATTR = "user.overlay.opaque"
_EXAMPLES = 3
_T = TypeVar("_T")

# kind -> (what was skipped, why); used to word the aggregated warnings.
_SKIP_REASONS = {
    "device": (
        "device nodes",
        "a rootless container cannot create devices; /dev is provided when the container starts",
    ),
    "escape": ("entries whose path leaves the archive root with '..'", "refused for safety"),
    "hardlink": ("hard links whose target is missing or a directory", "nothing to link to"),
    "parent": ("entries whose parent is not a directory", "the path cannot be created"),
    "type": ("entries of an unsupported type", "not a file, directory, link or fifo"),
    "whiteout": ("whiteout entries with an invalid name", "ignored"),
}


@dataclasses.dataclass(frozen=True)
class UnpackOptions:
    """chown: give files the archive's owners (needs to run as root of a user namespace).
    mapping: the namespace's mapping; owners outside it are unmapped (see ignore_unmapped).
    ignore_unmapped: leave files with unmapped owners to root instead of failing (a single
    id mapping maps only root). whiteouts: turn OCI whiteouts into overlay whiteouts."""

    chown: bool = True
    mapping: IdMapping | None = None
    ignore_unmapped: bool = False
    whiteouts: bool = False


@dataclasses.dataclass
class UnpackReport:
    """What was unpacked and what was skipped (aggregated, so a warning is printed once)."""

    entries: int = 0
    unmapped: int = 0
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def skip(self, kind: str, name: bytes) -> None:
        self.skipped[kind] = self.skipped.get(kind, 0) + 1
        shown = self.examples.setdefault(kind, [])
        if len(shown) < _EXAMPLES:
            shown.append(name.decode("utf-8", "backslashreplace"))

    def warnings(self) -> list[str]:
        """One line per kind of skipped entry, e.g. for a parent to print to stderr."""
        lines = []
        for kind, count in sorted(self.skipped.items()):
            what, why = _SKIP_REASONS.get(kind, (kind, ""))
            examples = ", ".join(self.examples.get(kind, []))
            more = ", ..." if count > len(self.examples.get(kind, [])) else ""
            lines.append(f"skipped {count} {what} ({examples}{more}): {why}")
        return lines

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UnpackReport:
        return cls(
            entries=int(data["entries"]),
            unmapped=int(data["unmapped"]),
            skipped=dict(data["skipped"]),
            examples=dict(data["examples"]),
        )


@dataclasses.dataclass(frozen=True)
class UnpackResult:
    diff_id: str  # "sha256:<hex>" of the uncompressed tar stream
    size: int  # bytes of the uncompressed tar stream
    report: UnpackReport


@dataclasses.dataclass
class _DirMeta:
    mode: int
    uid: int
    gid: int
    mtime_ns: int


def unpack_file(
    tarball_fd: int, dest_fd: int, options: UnpackOptions, *, digest: bool = True
) -> UnpackResult:
    """Unpack the tarball open on tarball_fd (any supported compression) into the directory
    open on dest_fd, computing its diff_id on the way (digest=False: the caller hashes the
    stream itself, as a pull's pump does, and diff_id is ""). Corrupt data raises
    LayerError; the caller removes the partial directory."""
    try:
        with archive.open_tar(tarball_fd, digest=digest) as (tar, reader):
            report = unpack(tar, dest_fd, options)
            reader.drain()
            return UnpackResult(diff_id=reader.digest, size=reader.size, report=report)
    except archive.data_errors() as e:
        raise LayerError("the tarball is corrupt", context=archive.describe_data_error(e)) from e


def unpack(tar: tarfile.TarFile, dest_fd: int, options: UnpackOptions) -> UnpackReport:
    """Unpack every member of tar (read in stream mode) into the directory open on dest_fd."""
    unpacker = _Unpacker(tar, dest_fd, options)
    # umask 0: fifos and whiteouts get exactly the archive's mode from mknod (they are never
    # chmod'ed, since fchmodat cannot refuse to follow a symlink without /proc tricks).
    old_umask = os.umask(0)
    try:
        while True:
            member = tar.next()
            if member is None:
                break
            # Stream mode appends every header to tar.members; drop them so memory stays
            # bounded for archives with millions of entries.
            tar.members.clear()  # type: ignore[attr-defined]  # typeshed omits it
            unpacker.entry(member)
        unpacker.finish_directories()
    finally:
        os.umask(old_umask)
    return unpacker.report


def normalise(name: str) -> list[bytes] | None:
    """The components of an archive path below the root, or None when '..' climbs above it.

    "/a/./b//c" and "./a/b/c" -> [b"a", b"b", b"c"]; "./" -> [] (the root itself).
    """
    parts: list[bytes] = []
    for component in name.encode("utf-8", "surrogateescape").split(b"/"):
        if component in (b"", b"."):
            continue
        if component == b"..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(component)
    return parts


class _SkipEntry(Exception):
    def __init__(self, kind: str):
        super().__init__(kind)
        self.kind = kind


class _Unpacker:
    def __init__(self, tar: tarfile.TarFile, root_fd: int, options: UnpackOptions):
        self.tar = tar
        self.root_fd = root_fd
        self.options = options
        self.report = UnpackReport()
        self.directories: dict[bytes, _DirMeta] = {}
        # The parent directory of the last entry, resolved in root (see _parent).
        self._parent_key: list[bytes] | None = None
        self._parent_fd = root_fd
        # New files belong to our effective ids, unless a setgid root passes its group down.
        st = os.fstat(root_fd)
        self._creator: tuple[int, int] | None = (
            None if st.st_mode & stat.S_ISGID else (os.geteuid(), os.getegid())
        )

    # -- one entry ------------------------------------------------------------------------

    def entry(self, member: tarfile.TarInfo) -> None:
        parts = normalise(member.name)
        if parts is None:
            self.report.skip("escape", member.name.encode("utf-8", "surrogateescape"))
            return
        try:
            self._entry(member, parts)
        except _SkipEntry as skip:
            self.report.skip(skip.kind, b"/".join(parts))
            return
        except archive.data_errors():
            raise
        except OSError as e:
            from sandbox.rootless import filesystems

            if filesystems.is_full(e):
                where = Path(f"/proc/self/fd/{self.root_fd}")  # the layer being unpacked
                raise LayerError(
                    filesystems.full_message(e, where),
                    context=f"while unpacking {member.name!r}",
                    hint="free some space there (sandbox rmi removes images)",
                ) from e
            raise LayerError(f"cannot unpack {member.name!r}", context=e.strerror or str(e)) from e
        self.report.entries += 1

    def _entry(self, member: tarfile.TarInfo, parts: list[bytes]) -> None:
        if not parts:
            # "./": the root itself; only its metadata can change.
            if member.isdir():
                self.directories[b""] = self._dir_meta(member)
            return
        name = parts[-1]
        if self.options.whiteouts and name.startswith(_WHITEOUT_PREFIX):
            self._whiteout(parts)
            return
        parent = self._parent(parts[:-1])
        if member.isdir():
            self._directory(member, parent, parts)
        elif member.isreg():
            self._regular(member, parent, parts)
        elif member.issym():
            self._symlink(member, parent, parts)
        elif member.islnk():
            self._hardlink(member, parent, parts)
        elif member.isfifo():
            mode = stat.S_IFIFO | (member.mode & 0o7777)
            self._create(parent, parts, lambda: os.mknod(name, mode, dir_fd=parent))
            self._own_nofollow(member, parent, name)
        elif member.ischr() and member.devmajor == 0 and member.devminor == 0:
            mode = stat.S_IFCHR | (member.mode & 0o7777)
            self._create(
                parent, parts, lambda: os.mknod(name, mode, os.makedev(0, 0), dir_fd=parent)
            )
            self._own_nofollow(member, parent, name)
        elif member.ischr() or member.isblk():
            raise _SkipEntry("device")
        else:
            raise _SkipEntry("type")

    def _directory(self, member: tarfile.TarInfo, parent: int, parts: list[bytes]) -> None:
        try:
            # 0700 until finish_directories(): we must be able to create the children.
            os.mkdir(parts[-1], 0o700, dir_fd=parent)
        except FileExistsError:
            if not self._clear(parent, parts, keep_dir=True):
                os.mkdir(parts[-1], 0o700, dir_fd=parent)
        self.directories[b"/".join(parts)] = self._dir_meta(member)

    def _regular(self, member: tarfile.TarInfo, parent: int, parts: list[bytes]) -> None:
        mode = member.mode & 0o7777
        # Created with its final mode (umask is 0), unless setuid/setgid/sticky bits must
        # wait until after chown, which clears them. O_CREAT gives a writable fd whatever
        # the mode says.
        special = bool(mode & 0o7000)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        name = parts[-1]
        fd = self._create(
            parent, parts, lambda: os.open(name, flags, 0o600 if special else mode, dir_fd=parent)
        )
        try:
            if member.sparse is not None:
                source = self.tar.extractfile(member)
                _copy_sparse(source, list(member.sparse), member.size, fd)  # type: ignore[arg-type]  # typeshed has bytes
            elif member.size:
                _copy(self.tar.extractfile(member), fd, member.size)  # type: ignore[arg-type]  # never None for a regular file
            uid, gid = self._owner_change(member)
            if uid != -1 or gid != -1:
                os.fchown(fd, uid, gid)
            if special:
                os.fchmod(fd, mode)
            mtime = _mtime_ns(member)
            os.utime(fd, ns=(mtime, mtime))
        finally:
            os.close(fd)

    def _symlink(self, member: tarfile.TarInfo, parent: int, parts: list[bytes]) -> None:
        # The target is only data: it is resolved later, in root, by whoever follows it.
        target = member.linkname.encode("utf-8", "surrogateescape")
        name = parts[-1]
        self._create(parent, parts, lambda: os.symlink(target, name, dir_fd=parent))
        self._own_nofollow(member, parent, name)

    def _hardlink(self, member: tarfile.TarInfo, parent: int, parts: list[bytes]) -> None:
        target = normalise(member.linkname)
        if target is None:
            raise _SkipEntry("escape")
        if not target or target == parts:
            raise _SkipEntry("hardlink")
        try:
            target_parent = self._open_dir(target[:-1], create=False)
        except _SkipEntry:
            raise _SkipEntry("hardlink") from None
        try:
            try:
                st = os.stat(target[-1], dir_fd=target_parent, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                raise _SkipEntry("hardlink") from None
            if stat.S_ISDIR(st.st_mode):
                raise _SkipEntry("hardlink")
            # follow_symlinks=False: linkat without AT_SYMLINK_FOLLOW links a symlink itself.
            self._create(
                parent,
                parts,
                lambda: os.link(
                    target[-1],
                    parts[-1],
                    src_dir_fd=target_parent,
                    dst_dir_fd=parent,
                    follow_symlinks=False,
                ),
            )
        finally:
            self._close(target_parent)

    def _whiteout(self, parts: list[bytes]) -> None:
        self._forget_parent()  # it removes, and may remove the cached parent itself
        name = parts[-1]
        if name == _OPAQUE:
            directory = b"/".join(parts[:-1]) or b"."
            self._close(self._open_dir(parts[:-1], create=True))
            # fsetxattr needs a real fd, not O_PATH; O_NOFOLLOW: never mark a symlink's target.
            fd = syscalls.openat2(
                self.root_fd,
                directory,
                os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                resolve=_RESOLVE,
            )
            try:
                os.setxattr(fd, OPAQUE_XATTR, b"y")
            finally:
                os.close(fd)
            return
        hidden = name[len(_WHITEOUT_PREFIX) :]
        if hidden in (b"", b".", b"..") or name.startswith(_WHITEOUT_PREFIX * 2):
            raise _SkipEntry("whiteout")
        target = [*parts[:-1], hidden]
        parent = self._open_dir(parts[:-1], create=True)
        try:
            self._clear(parent, target)
            os.mknod(hidden, stat.S_IFCHR, os.makedev(0, 0), dir_fd=parent)
        finally:
            self._close(parent)

    # -- helpers --------------------------------------------------------------------------

    def _parent(self, parts: list[bytes]) -> int:
        """The directory parts (created when missing), as _open_dir, kept open for the next
        entries with the same parent (archives list a directory's files together)."""
        if parts == self._parent_key:
            return self._parent_fd
        self._forget_parent()
        self._close(self._parent_fd)
        self._parent_fd = self.root_fd
        self._parent_fd = self._open_dir(parts, create=True)
        self._parent_key = parts
        return self._parent_fd

    def _forget_parent(self) -> None:
        """Resolve the parent again next time: something was removed, which may have been
        the cached directory or one of its ancestors. The fd stays open until the next
        _parent() (the entry in progress may still use it)."""
        self._parent_key = None

    def _create(self, parent: int, parts: list[bytes], make: Callable[[], _T]) -> _T:
        """make() the entry at parts; when the name is taken, clear it (the later entry
        wins) and make it again."""
        try:
            return make()
        except FileExistsError:
            self._clear(parent, parts)
            return make()

    def _open_dir(self, parts: list[bytes], *, create: bool) -> int:
        """An O_PATH fd of the directory parts, resolved in root; missing ones are created
        (0755, owned by the namespace's root) when create is set. Returns root_fd itself for
        the root (never close it: use _close)."""
        if not parts:
            return self.root_fd
        flags = os.O_PATH | os.O_DIRECTORY
        try:
            return syscalls.openat2(self.root_fd, b"/".join(parts), flags, resolve=_RESOLVE)
        except FileNotFoundError:
            if not create:
                raise _SkipEntry("parent") from None
        except (NotADirectoryError, OSError) as e:
            if e.errno in (errno.ENOTDIR, errno.ELOOP, errno.EXDEV):
                raise _SkipEntry("parent") from None
            raise
        # Walk down, creating what is missing; each prefix is re-resolved from the root so a
        # symlink met on the way is still followed in root.
        fd = self.root_fd
        for depth in range(1, len(parts) + 1):
            prefix = b"/".join(parts[:depth])
            try:
                next_fd = syscalls.openat2(self.root_fd, prefix, flags, resolve=_RESOLVE)
            except FileNotFoundError:
                try:
                    os.mkdir(parts[depth - 1], 0o755, dir_fd=fd)
                    next_fd = syscalls.openat2(self.root_fd, prefix, flags, resolve=_RESOLVE)
                except (FileExistsError, FileNotFoundError, NotADirectoryError):
                    # A dangling symlink stands where a directory is needed.
                    self._close(fd)
                    raise _SkipEntry("parent") from None
                except BaseException:
                    self._close(fd)
                    raise
            except OSError as e:
                self._close(fd)
                if e.errno in (errno.ENOTDIR, errno.ELOOP, errno.EXDEV):
                    raise _SkipEntry("parent") from None
                raise
            self._close(fd)
            fd = next_fd
        return fd

    def _close(self, fd: int) -> None:
        if fd != self.root_fd:
            os.close(fd)

    def _clear(self, parent: int, parts: list[bytes], *, keep_dir: bool = False) -> bool:
        """Remove what stands at parts (the later entry wins). Returns True when a directory
        is there and keep_dir asked to keep it."""
        name = parts[-1]
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            self._forget_parent()
            shutil.rmtree(name, dir_fd=parent)
            # Forget the metadata of the directories that went with it.
            key = b"/".join(parts)
            for path in [p for p in self.directories if p == key or p.startswith(key + b"/")]:
                del self.directories[path]
        else:
            self._forget_parent()
            os.unlink(name, dir_fd=parent)
        return False

    def _owner(self, member: tarfile.TarInfo) -> tuple[int, int]:
        """The (uid, gid) to chown to; -1 leaves one unchanged."""
        if not self.options.chown:
            return -1, -1
        uid, gid = member.uid, member.gid
        mapping = self.options.mapping
        if mapping is None:
            return uid, gid
        unmapped_uid = mapping.host_uid(uid) is None
        unmapped_gid = mapping.host_gid(gid) is None
        if unmapped_uid or unmapped_gid:
            if not self.options.ignore_unmapped:
                which = f"uid {uid}" if unmapped_uid else f"gid {gid}"
                count = mapping.uid_count if unmapped_uid else mapping.gid_count
                raise LayerError(
                    f"{member.name!r} is owned by {which}, outside the {count} ids mapped",
                    hint="grant the user more subordinate ids in /etc/subuid and /etc/subgid, "
                    "or set 'userns: single' in config.yaml (such files then belong to "
                    "root)",
                )
            self.report.unmapped += 1
        return (-1 if unmapped_uid else uid), (-1 if unmapped_gid else gid)

    def _owner_change(self, member: tarfile.TarInfo) -> tuple[int, int]:
        """_owner for an entry we just created: -1 where it already has that id."""
        uid, gid = self._owner(member)
        if self._creator is not None:
            if uid == self._creator[0]:
                uid = -1
            if gid == self._creator[1]:
                gid = -1
        return uid, gid

    def _own_nofollow(self, member: tarfile.TarInfo, parent: int, name: bytes) -> None:
        uid, gid = self._owner_change(member)
        if uid != -1 or gid != -1:
            os.chown(name, uid, gid, dir_fd=parent, follow_symlinks=False)
        mtime = _mtime_ns(member)
        os.utime(name, ns=(mtime, mtime), dir_fd=parent, follow_symlinks=False)

    def _dir_meta(self, member: tarfile.TarInfo) -> _DirMeta:
        # Every directory here was made by us (mkdir, or the caller's empty root).
        uid, gid = self._owner_change(member)
        return _DirMeta(mode=member.mode & 0o7777, uid=uid, gid=gid, mtime_ns=_mtime_ns(member))

    def finish_directories(self) -> None:
        """Apply directory owners, modes and times, deepest first: a parent that becomes
        read-only (or unsearchable, for a caller without CAP_DAC_OVERRIDE) must come last."""
        self._forget_parent()
        self._close(self._parent_fd)
        self._parent_fd = self.root_fd
        for path in sorted(self.directories, key=lambda p: p.count(b"/") + bool(p), reverse=True):
            meta = self.directories[path]
            try:
                fd = syscalls.openat2(
                    self.root_fd,
                    path or b".",
                    os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                    resolve=_RESOLVE,
                )
            except OSError as e:
                # Replaced by a later entry (a file, a symlink): nothing of ours to change.
                if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    continue
                raise
            try:
                if meta.uid != -1 or meta.gid != -1:
                    os.fchown(fd, meta.uid, meta.gid)
                os.fchmod(fd, meta.mode)
                os.utime(fd, ns=(meta.mtime_ns, meta.mtime_ns))
            finally:
                os.close(fd)


def _mtime_ns(member: tarfile.TarInfo) -> int:
    return round(float(member.mtime) * 1_000_000_000)


def _copy_sparse(source: Any, regions: list[tuple[int, int]], size: int, fd: int) -> None:
    """A sparse member (GNU or pax): only its data regions are read and written, at their
    offsets, and the rest stays a hole. Reading it whole would expand the holes to zeros: a
    few kilobytes of archive could then keep us busy producing a terabyte of them."""
    # The unbuffered member reader: its seek() moves within the member's map without asking
    # the (unseekable) decompression stream underneath; data regions come in order.
    raw = getattr(source, "raw", source)
    for offset, length in regions:
        if offset + length > size:
            raise LayerError("a sparse file's data region lies beyond its size")
        raw.seek(offset)
        left = length
        while left:
            chunk = raw.read(min(CHUNK, left))
            if not chunk:
                raise LayerError("the archive ends inside a sparse file's data")
            os.pwrite(fd, chunk, offset + length - left)
            left -= len(chunk)
    os.ftruncate(fd, size)


def _copy(source: archive.Readable, fd: int, length: int) -> None:
    """Copy length bytes of source to fd in bounded chunks; whole chunks of zeros become
    holes. Reads no further than length (no extra read to find the end)."""
    size = 0
    hole = False
    while size < length:
        chunk = source.read(min(CHUNK, length - size))
        if not chunk:
            break
        size += len(chunk)
        if len(chunk) == CHUNK and chunk == _ZEROS:
            os.lseek(fd, CHUNK, os.SEEK_CUR)
            hole = True
            continue
        view = memoryview(chunk)
        while view:
            written = os.write(fd, view)
            view = view[written:]
    if hole:
        # A trailing hole: the size is set by truncation, not by a write.
        os.ftruncate(fd, size)
