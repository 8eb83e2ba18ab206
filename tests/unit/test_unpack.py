"""Safe unpacking: hostile tarballs must not touch anything outside the layer directory.

These run as any user without a user namespace: chown=False leaves every file to the caller.
Each test snapshots the directory around the layer (and /etc/passwd) and checks it is unchanged.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.errors import LayerError
from sandbox.images import archive, unpack
from sandbox.images.unpack import (
    OPAQUE_XATTR,
    UnpackOptions,
    UnpackResult,
    normalise,
    unpack_file,
)

Member = tuple[tarfile.TarInfo, bytes | None]
MTIME = 1_600_000_000


def entry(
    name: str,
    kind: bytes = tarfile.REGTYPE,
    *,
    data: bytes | None = None,
    mode: int = 0o644,
    linkname: str = "",
    dev: tuple[int, int] = (0, 0),
) -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = MTIME
    info.linkname = linkname
    info.devmajor, info.devminor = dev
    if kind == tarfile.REGTYPE:
        data = data if data is not None else b""
        info.size = len(data)
    return info, data


def directory(name: str, mode: int = 0o755) -> Member:
    return entry(name, tarfile.DIRTYPE, mode=mode)


def symlink(name: str, target: str) -> Member:
    return entry(name, tarfile.SYMTYPE, mode=0o777, linkname=target)


def hardlink(name: str, target: str) -> Member:
    return entry(name, tarfile.LNKTYPE, linkname=target)


def tar_bytes(members: list[Member], fmt: int = tarfile.GNU_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(
        fileobj=buffer, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape"
    ) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int, int, bytes]]:
    """(mode, size, mtime, content or link target) of everything under root except skip."""
    seen: dict[str, tuple[int, int, int, bytes]] = {}
    for top, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if Path(top, d) != skip]
        for name in [*dirs, *files]:
            path = Path(top, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                content = os.fsencode(os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                content = path.read_bytes()
            else:
                content = b""
            seen[str(path)] = (st.st_mode, st.st_size, st.st_mtime_ns, content)
    for host_file in ("/etc/passwd", "/etc/hostname"):
        if os.path.exists(host_file):
            st = os.stat(host_file)
            seen[host_file] = (
                st.st_mode,
                st.st_nlink,
                st.st_mtime_ns,
                Path(host_file).read_bytes(),
            )
    return seen


class Sandbox:
    """tmp_path/outside holds victims; tmp_path/layer is where archives are unpacked."""

    def __init__(self, tmp_path: Path):
        self.base = tmp_path
        self.outside = tmp_path / "outside"
        self.outside.mkdir()
        (self.outside / "victim").write_text("secret\n")
        (self.outside / "dir").mkdir()
        self.layer = tmp_path / "layer"
        self.layer.mkdir()

    def unpack(self, data: bytes, *, whiteouts: bool = False) -> UnpackResult:
        path = self.base / f"archive-{len(list(self.base.iterdir()))}.tar"
        path.write_bytes(data)
        before = snapshot(self.base, self.layer)
        fd = os.open(path, os.O_RDONLY)
        dest = os.open(self.layer, os.O_RDONLY | os.O_DIRECTORY)
        try:
            result = unpack_file(fd, dest, UnpackOptions(chown=False, whiteouts=whiteouts))
        finally:
            os.close(fd)
            os.close(dest)
            assert snapshot(self.base, self.layer) == before, "something outside changed"
        return result


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Sandbox]:
    yield Sandbox(tmp_path)
    # Give back what read-only directories took away, so pytest can clean up.
    for top, dirs, _ in os.walk(tmp_path):
        for d in dirs:
            if not Path(top, d).is_symlink():
                os.chmod(Path(top, d), 0o755)


def test_normalise() -> None:
    assert normalise("/a/./b//c") == [b"a", b"b", b"c"]
    assert normalise("./a/b/") == [b"a", b"b"]
    assert normalise("./") == []
    assert normalise("a/../b") == [b"b"]
    assert normalise("../x") is None
    assert normalise("a/../../x") is None
    assert normalise("caf\udce9") == [b"caf\xe9"]


def test_dotdot_entries_are_skipped(box: Sandbox) -> None:
    result = box.unpack(
        tar_bytes(
            [
                entry("../escape", data=b"x"),
                entry("a/../../escape2", data=b"x"),
                entry("./ok", data=b"fine"),
            ]
        )
    )
    assert result.report.skipped == {"escape": 2}
    assert os.listdir(box.layer) == ["ok"]
    assert not (box.base / "escape").exists()


def test_absolute_paths_land_inside(box: Sandbox) -> None:
    box.unpack(tar_bytes([entry(str(box.outside / "victim"), data=b"pwned")]))
    inside = box.layer / str(box.outside / "victim").lstrip("/")
    assert inside.read_bytes() == b"pwned"


def test_write_through_symlink_pointing_outside(box: Sandbox) -> None:
    result = box.unpack(
        tar_bytes(
            [
                symlink("abs", str(box.outside)),
                entry("abs/victim", data=b"pwned"),
                symlink("rel", "../../../../../../" + str(box.outside)),
                entry("rel/victim", data=b"pwned"),
                directory("etc"),
                symlink("hostetc", "/etc"),
                entry("hostetc/hostname", data=b"pwned"),
            ]
        )
    )
    # abs and rel resolve in root to a path that does not exist in the layer: skipped.
    assert result.report.skipped == {"parent": 2}
    # /etc resolves to the layer's own etc.
    assert (box.layer / "etc" / "hostname").read_bytes() == b"pwned"


def test_regular_file_replaces_symlink_instead_of_following_it(box: Sandbox) -> None:
    box.unpack(
        tar_bytes(
            [
                symlink("s", str(box.outside / "victim")),
                entry("s", data=b"pwned", mode=0o777),
                symlink("d", str(box.outside / "dir")),
                directory("d", mode=0o777),
            ]
        )
    )
    assert (box.layer / "s").read_bytes() == b"pwned"
    assert (box.layer / "d").is_dir() and not (box.layer / "d").is_symlink()


def test_symlink_as_parent_of_a_later_entry(box: Sandbox) -> None:
    box.unpack(
        tar_bytes(
            [
                directory("usr"),
                directory("usr/lib"),
                symlink("lib", "usr/lib"),
                symlink("lib64", "/usr/lib"),
                entry("lib/libc.so", data=b"elf"),
                entry("lib64/ld.so", data=b"elf"),
                # A loop through ".." stays at the root.
                symlink("up", ".."),
                entry("up/up/top", data=b"top"),
            ]
        )
    )
    assert (box.layer / "usr/lib/libc.so").read_bytes() == b"elf"
    assert (box.layer / "usr/lib/ld.so").read_bytes() == b"elf"
    assert (box.layer / "top").read_bytes() == b"top"


def test_hard_links_cannot_reach_outside(box: Sandbox) -> None:
    result = box.unpack(
        tar_bytes(
            [
                hardlink("pw", "/etc/passwd"),
                hardlink("pw2", "../../../../etc/passwd"),
                symlink("hostetc", "/etc"),
                hardlink("pw3", "hostetc/passwd"),
                hardlink("victim", str(box.outside / "victim")),
            ]
        )
    )
    assert result.report.skipped == {"hardlink": 3, "escape": 1}
    assert sorted(os.listdir(box.layer)) == ["hostetc"]


def test_hard_link_to_a_symlink_links_the_symlink(box: Sandbox) -> None:
    box.unpack(
        tar_bytes(
            [
                symlink("s", "/etc/passwd"),
                hardlink("h", "s"),
                entry("f", data=b"data"),
                hardlink("g", "./f"),
                directory("d"),
                hardlink("dlink", "d"),
            ]
        )
    )
    assert (box.layer / "h").is_symlink()
    assert os.readlink(box.layer / "h") == "/etc/passwd"
    assert os.lstat(box.layer / "h").st_ino == os.lstat(box.layer / "s").st_ino
    assert os.stat(box.layer / "g").st_ino == os.stat(box.layer / "f").st_ino
    assert not (box.layer / "dlink").exists()


def test_devices_are_skipped_fifos_and_whiteout_devices_created(box: Sandbox) -> None:
    result = box.unpack(
        tar_bytes(
            [
                directory("dev"),
                entry("dev/null", tarfile.CHRTYPE, dev=(1, 3), mode=0o666),
                entry("dev/sda", tarfile.BLKTYPE, dev=(8, 0), mode=0o660),
                entry("fifo", tarfile.FIFOTYPE, mode=0o620),
                entry("gone", tarfile.CHRTYPE, dev=(0, 0), mode=0),
            ]
        )
    )
    assert result.report.skipped == {"device": 2}
    assert os.listdir(box.layer / "dev") == []
    st = os.lstat(box.layer / "fifo")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o620
    st = os.lstat(box.layer / "gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
    assert any("device nodes" in line for line in result.report.warnings())


def test_duplicate_entries_the_later_wins(box: Sandbox) -> None:
    box.unpack(
        tar_bytes(
            [
                entry("f", data=b"first"),
                entry("f", data=b"second", mode=0o600),
                directory("d"),
                entry("d/child", data=b"x"),
                entry("d", data=b"now a file"),
                entry("x", data=b"file"),
                directory("x", mode=0o700),
                entry("x/y", data=b"y"),
            ]
        )
    )
    assert (box.layer / "f").read_bytes() == b"second"
    assert stat.S_IMODE(os.stat(box.layer / "f").st_mode) == 0o600
    assert (box.layer / "d").read_bytes() == b"now a file"
    assert stat.S_IMODE(os.stat(box.layer / "x").st_mode) == 0o700
    assert (box.layer / "x/y").read_bytes() == b"y"


def test_non_utf8_names(box: Sandbox) -> None:
    name = b"caf\xe9".decode("utf-8", "surrogateescape")
    box.unpack(
        tar_bytes(
            [
                directory(name),
                entry(name + "/" + name, data=b"latin-1"),
                symlink("link", name),
            ],
            fmt=tarfile.GNU_FORMAT,
        )
    )
    layer = os.fsencode(box.layer)
    assert sorted(os.listdir(layer)) == [b"caf\xe9", b"link"]
    with open(layer + b"/caf\xe9/caf\xe9", "rb") as f:
        assert f.read() == b"latin-1"
    assert os.readlink(layer + b"/link") == b"caf\xe9"


def test_non_utf8_names_pax(box: Sandbox) -> None:
    name = "d\u00e9j\u00e0-vu"
    box.unpack(tar_bytes([entry(name, data=b"pax")], fmt=tarfile.PAX_FORMAT))
    assert (box.layer / name).read_bytes() == b"pax"


def test_read_only_directories_get_their_mode_after_their_children(box: Sandbox) -> None:
    box.unpack(
        tar_bytes(
            [
                directory("./", mode=0o751),
                directory("ro", mode=0o555),
                entry("ro/child", data=b"c"),
                directory("ro/sub", mode=0o500),
                entry("ro/sub/deep", data=b"d"),
                directory("none", mode=0),
                entry("none/f", data=b"f"),
            ]
        )
    )
    assert stat.S_IMODE(os.stat(box.layer).st_mode) == 0o751
    assert stat.S_IMODE(os.stat(box.layer / "ro").st_mode) == 0o555
    assert stat.S_IMODE(os.stat(box.layer / "ro/sub").st_mode) == 0o500
    assert stat.S_IMODE(os.stat(box.layer / "none").st_mode) == 0
    os.chmod(box.layer / "none", 0o700)
    assert (box.layer / "none/f").read_bytes() == b"f"
    assert (box.layer / "ro/child").read_bytes() == b"c"
    assert os.stat(box.layer / "ro").st_mtime == MTIME


def test_modes_times_and_setuid_are_kept(box: Sandbox) -> None:
    box.unpack(
        tar_bytes(
            [
                entry("su", data=b"#!", mode=0o4755),
                entry("sg", data=b"#!", mode=0o2711),
                directory("sticky", mode=0o1777),
                symlink("link", "su"),
            ]
        )
    )
    assert stat.S_IMODE(os.stat(box.layer / "su").st_mode) == 0o4755
    assert stat.S_IMODE(os.stat(box.layer / "sg").st_mode) == 0o2711
    assert stat.S_IMODE(os.stat(box.layer / "sticky").st_mode) == 0o1777
    assert os.stat(box.layer / "su").st_mtime == MTIME
    assert os.lstat(box.layer / "link").st_mtime == MTIME


def test_whiteouts(box: Sandbox) -> None:
    box.unpack(
        tar_bytes(
            [
                directory("a"),
                entry("a/keep", data=b"k"),
                entry("a/b", data=b"to be hidden"),
                entry("a/.wh.b"),
                entry("a/.wh.c"),
                entry("a/.wh..wh..opq"),
                entry("new/.wh..wh..opq"),
            ]
        ),
        whiteouts=True,
    )
    for name in ("b", "c"):
        st = os.lstat(box.layer / "a" / name)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
    assert os.getxattr(box.layer / "a", OPAQUE_XATTR) == b"y"
    assert os.getxattr(box.layer / "new", OPAQUE_XATTR) == b"y"
    assert sorted(os.listdir(box.layer / "a")) == ["b", "c", "keep"]


def test_whiteouts_are_plain_files_without_the_flag(box: Sandbox) -> None:
    box.unpack(tar_bytes([entry(".wh.x", data=b"")]))
    assert (box.layer / ".wh.x").is_file()


def test_sparse_data_stays_sparse(box: Sandbox) -> None:
    data = bytes(4 << 20) + b"end"
    box.unpack(tar_bytes([entry("sparse", data=data)]))
    st = os.stat(box.layer / "sparse")
    assert st.st_size == len(data)
    assert st.st_blocks * 512 < (1 << 20)
    assert (box.layer / "sparse").read_bytes() == data


@pytest.mark.parametrize("compress", ["none", "gzip", "xz", "bzip2", "zstd"])
def test_compressions_detected_by_magic_and_diff_id_is_the_tar_digest(
    box: Sandbox, compress: str
) -> None:
    raw = tar_bytes([directory("etc"), entry("etc/hostname", data=b"box\n")])
    if compress == "gzip":
        data = gzip.compress(raw)
    elif compress == "xz":
        data = lzma.compress(raw)
    elif compress == "bzip2":
        data = bz2.compress(raw)
    elif compress == "zstd":
        zstandard = pytest.importorskip("zstandard")
        data = zstandard.ZstdCompressor().compress(raw)
    else:
        data = raw
    result = box.unpack(data)
    assert result.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert result.size == len(raw)
    assert (box.layer / "etc/hostname").read_bytes() == b"box\n"


def test_not_a_tarball(box: Sandbox) -> None:
    with pytest.raises(LayerError, match="not a tar archive"):
        box.unpack(b"hello, this is not a tarball\n" * 100)
    with pytest.raises(LayerError, match="not a tar archive"):
        box.unpack(b"")


def test_corrupt_gzip_midway(box: Sandbox) -> None:
    raw = tar_bytes([entry(f"f{i}", data=os.urandom(50_000)) for i in range(10)])
    data = bytearray(gzip.compress(raw))
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64
    with pytest.raises(LayerError, match="corrupt"):
        box.unpack(bytes(data))


def test_truncated_archive(box: Sandbox) -> None:
    raw = tar_bytes([entry("big", data=os.urandom(100_000))])
    with pytest.raises(LayerError, match="corrupt"):
        box.unpack(gzip.compress(raw[:60_000]))


def test_detect() -> None:
    assert archive.detect(b"\x1f\x8b\x08rest") == "gzip"
    assert archive.detect(b"\xfd7zXZ\x00rest") == "xz"
    assert archive.detect(b"\x28\xb5\x2f\xfdrest") == "zstd"
    assert archive.detect(tar_bytes([entry("x")])[:512]) == "tar"
    with pytest.raises(LayerError):
        archive.detect(b"PK\x03\x04 a zip file")


def test_huge_sparse_member_reads_only_its_data(tmp_path: Path) -> None:
    """A terabyte-sized GNU sparse member unpacks at once, as a hole with its data at the end."""
    import subprocess

    source = tmp_path / "src"
    source.mkdir()
    with open(source / "sparse", "wb") as f:
        f.truncate(1 << 40)
        f.seek((1 << 40) - 5)
        f.write(b"tail\n")
    archive = tmp_path / "sparse.tar"
    subprocess.run(["tar", "--sparse", "-cf", archive, "-C", source, "sparse"], check=True)
    dest = tmp_path / "layer"
    dest.mkdir()
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with open(archive, "rb") as f:
            unpack.unpack_file(f.fileno(), fd, unpack.UnpackOptions(chown=False))
    finally:
        os.close(fd)
    out = dest / "sparse"
    assert out.stat().st_size == 1 << 40
    assert out.stat().st_blocks * 512 < 1 << 20
    with open(out, "rb") as f:
        f.seek((1 << 40) - 5)
        assert f.read() == b"tail\n"


def test_archive_order_decides_with_a_cached_parent(box: Sandbox) -> None:
    """The parent's fd is kept for consecutive entries: the same file reached through a
    symlinked parent, a file that later stands where a parent should be, a hard link to a
    file just written, a directory replaced while its files were written."""
    many = [entry(f"bulk/{i}", data=b"%d" % i) for i in range(200)]
    result = box.unpack(
        tar_bytes(
            [
                directory("a"),
                symlink("b", "a"),
                entry("a/f", data=b"first"),
                entry("b/f", data=b"second"),  # the same file, reached through b: later wins
                entry("file", data=b"a file"),
                entry("file/child", data=b"x"),  # its parent is a file: skipped
                entry("t", data=b"target"),
                hardlink("t-link", "t"),
                directory("d"),
                entry("d/one", data=b"1"),
                entry("d/two", data=b"2"),
                symlink("d", "a"),  # replaces the directory and what is being written in it
                directory("bulk"),
                *many,
                entry("bulk/0", data=b"again"),
            ]
        )
    )
    assert (box.layer / "a/f").read_bytes() == b"second"
    assert (box.layer / "file").read_bytes() == b"a file"
    assert result.report.skipped == {"parent": 1}
    assert os.stat(box.layer / "t-link").st_ino == os.stat(box.layer / "t").st_ino
    assert os.readlink(box.layer / "d") == "a"
    assert (box.layer / "bulk/0").read_bytes() == b"again"
    assert (box.layer / f"bulk/{len(many) - 1}").read_bytes() == b"%d" % (len(many) - 1)


def test_unpacks_from_a_pipe_that_delivers_in_pieces(tmp_path: Path) -> None:
    """A pull feeds the unpacking process through a pipe: the head that tells plain tar from
    compressed data may arrive a few bytes at a time."""
    import threading

    data = tar_bytes([directory("etc"), entry("etc/hostname", data=b"box\n")])
    r, w = os.pipe()

    def feed() -> None:
        try:
            for i in range(0, len(data), 7):
                os.write(w, data[i : i + 7])
        finally:
            os.close(w)

    feeder = threading.Thread(target=feed)
    feeder.start()
    dest = tmp_path / "layer"
    dest.mkdir()
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        result = unpack_file(r, fd, UnpackOptions(chown=False))
    finally:
        os.close(fd)
        os.close(r)
        feeder.join()
    assert (dest / "etc/hostname").read_bytes() == b"box\n"
    assert result.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
