"""The image store's index, names, layer sharing and crash clean-up, without a namespace.

An in-process runner stands in for the user namespace and chown=False leaves files to the
caller, so these run as any user; tests/integration covers the namespaced path end to end.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sandbox.errors import ImageError, ImageNotFound, LayerError, UsageError
from sandbox.images import store as store_module
from sandbox.images.store import Image, ImageStore, find_image
from sandbox.rootless.channel import Channel, ChannelClosed
from sandbox.rootless.idmap import IdMapping, IdRange


def in_process(
    mapping: IdMapping,
    target: Callable[[Channel], int],
    on_message: Callable[[dict[str, Any], list[int]], None],
) -> int:
    parent, child = Channel.pair()
    try:
        code = target(child)
    finally:
        child.close()
    try:
        while True:
            try:
                message, fds = parent.recv()
            except ChannelClosed:
                return code
            on_message(message, fds)
    finally:
        parent.close()


MAPPING = IdMapping(
    (IdRange(0, os.getuid(), 1),), (IdRange(0, os.getgid(), 1),), single_reason="unit test"
)


def make_tar(path: Path, files: dict[str, bytes], *, compress: bool = False) -> Path:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = buffer.getvalue()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    warnings: list[str] = []
    return ImageStore(
        tmp_path / "storage", MAPPING, runner=in_process, chown=False, warn=warnings.append
    )


def layer_entries(store: ImageStore) -> list[str]:
    return sorted(os.listdir(store.layers_dir))


def test_import_lists_and_looks_up(store: ImageStore, tmp_path: Path) -> None:
    tarball = make_tar(tmp_path / "rootfs.tar.gz", {"etc/hostname": b"box\n"}, compress=True)
    image = store.import_rootfs(tarball, "busybox")
    assert image.names == ("localhost/busybox:latest",)
    assert len(image.id) == 64
    blob = (store.blobs_dir / image.id).read_bytes()
    assert hashlib.sha256(blob).hexdigest() == image.id
    config = json.loads(blob)
    assert config["rootfs"] == {"type": "layers", "diff_ids": list(image.layers)}
    assert config["os"] == "linux"
    assert image.config == {"Env": [store_module.DEFAULT_PATH]}
    raw = gzip.decompress(tarball.read_bytes())
    assert image.layers == ("sha256:" + hashlib.sha256(raw).hexdigest(),)
    assert image.size == len(raw)
    assert store.images() == [image]
    for name in (
        "busybox",
        "busybox:latest",
        "localhost/busybox",
        image.id[:3],
        "sha256:" + image.id,
        image.id,
    ):
        assert store.lookup(name) == image
    [diff] = store.layer_paths(image)
    assert (diff / "etc/hostname").read_bytes() == b"box\n"
    layer = json.loads((diff.parent / "layer.json").read_text())
    assert layer["diff_id"] == image.layers[0] and layer["size"] == len(raw)
    assert layer_entries(store) == [image.layers[0][7:]]


def test_lookup_not_found_names_what_was_tried(store: ImageStore) -> None:
    with pytest.raises(ImageNotFound) as caught:
        store.lookup("nothing:here")
    assert "localhost/nothing:here" in str(caught.value)
    assert caught.value.hint == store_module.NOT_FOUND_HINT
    with pytest.raises(UsageError):
        store.lookup("Not/Valid")


def fake(id_: str, *names: str) -> Image:
    return Image(id=id_, names=names, layers=(), created="", size=0, config={})


def test_find_image_order_and_ambiguity() -> None:
    local = fake("a" * 64, "localhost/busybox:latest")
    hub = fake("ab" + "c" * 62, "docker.io/library/busybox:latest", "docker.io/x/busybox:1")
    other = fake("abd" + "0" * 61, "quay.io/y/busybox:latest")
    assert find_image([hub, local], "busybox") == (local, "localhost/busybox:latest")
    assert find_image([hub], "busybox") == (hub, "docker.io/library/busybox:latest")
    assert find_image([hub], "busybox:1") == (hub, "docker.io/x/busybox:1")
    with pytest.raises(ImageError, match="several images"):
        find_image([hub, other], "busybox")
    assert find_image([local, hub, other], "abc") == (hub, None)
    assert find_image([local, hub, other], "sha256:abd") == (other, None)
    with pytest.raises(ImageNotFound):
        find_image([local, hub, other], "ab")  # fewer than 3 digits: not an id prefix
    twin = fake("abc" + "1" * 61)
    with pytest.raises(ImageError, match="ambiguous"):
        find_image([hub, twin], "abc")
    assert find_image([hub, twin], "abcc") == (hub, None)


def test_same_layer_is_shared_and_removed_with_its_last_image(
    store: ImageStore, tmp_path: Path
) -> None:
    tarball = make_tar(tmp_path / "rootfs.tar", {"f": b"data"})
    first = store.import_rootfs(tarball, "one")
    second = store.import_rootfs(tarball, "two:v2")
    assert first.layers == second.layers and first.id != second.id
    assert layer_entries(store) == [first.layers[0][7:]]
    assert store.remove("one") == (["localhost/one:latest"], [first.id])
    assert layer_entries(store) == [first.layers[0][7:]]
    assert not (store.blobs_dir / first.id).exists()
    assert store.remove("two:v2") == (["localhost/two:v2"], [second.id])
    assert layer_entries(store) == []
    assert store.images() == []


def test_names_move_and_untag(store: ImageStore, tmp_path: Path) -> None:
    a = store.import_rootfs(make_tar(tmp_path / "a.tar", {"a": b"a"}), "x")
    b = store.import_rootfs(make_tar(tmp_path / "b.tar", {"b": b"b"}), "x")
    assert store.lookup(a.id).names == ()
    assert store.lookup("x").id == b.id
    store.tag("x", "y:1")
    assert store.lookup(b.id).names == ("localhost/x:latest", "localhost/y:1")
    with pytest.raises(UsageError, match="several names"):
        store.remove(b.id)
    assert store.remove("y:1") == (["localhost/y:1"], [])
    assert store.lookup(b.id).names == ("localhost/x:latest",)
    store.tag("x", "z")
    assert store.remove(b.id, force=True) == (["localhost/x:latest", "localhost/z:latest"], [b.id])
    assert store.remove(a.id[:8]) == ([], [a.id])
    assert layer_entries(store) == []


def test_bad_tarballs_leave_nothing(store: ImageStore, tmp_path: Path) -> None:
    good = store.import_rootfs(make_tar(tmp_path / "good.tar", {"f": b"f"}), "good")
    index = (store.root / store_module.INDEX).read_bytes()
    (tmp_path / "junk").write_bytes(b"not a tarball at all" * 100)
    with pytest.raises(ImageError, match="not a tar archive"):
        store.import_rootfs(tmp_path / "junk", "junk")
    with pytest.raises(ImageError, match="No such file"):
        store.import_rootfs(tmp_path / "missing.tar", "missing")
    raw = gzip.compress(
        make_tar(
            tmp_path / "big.tar", {f"f{i}": os.urandom(20_000) for i in range(20)}
        ).read_bytes()
    )
    (tmp_path / "cut.tar.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(LayerError, match=r"cannot import .*corrupt"):
        store.import_rootfs(tmp_path / "cut.tar.gz", "cut")
    assert layer_entries(store) == [good.layers[0][7:]]
    assert (store.root / store_module.INDEX).read_bytes() == index
    assert [p for p in os.listdir(store.root) if p.startswith(".tmp-")] == []


def test_dead_tmp_entries_are_cleaned_but_live_ones_kept(store: ImageStore, tmp_path: Path) -> None:
    store.import_rootfs(make_tar(tmp_path / "a.tar", {"a": b"a"}), "a")
    dead = store.layers_dir / ".tmp-dead"
    (dead / "diff" / "sub").mkdir(parents=True)
    (dead / "diff" / "sub" / "file").write_text("half a layer")
    live = store.layers_dir / ".tmp-live"
    live.mkdir()
    (store.root / ".tmp-images.json-1234").write_text("{")
    fd = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        store.import_rootfs(make_tar(tmp_path / "b.tar", {"b": b"b"}), "b")
        assert not dead.exists()
        assert live.exists()
        assert not (store.root / ".tmp-images.json-1234").exists()
    finally:
        os.close(fd)
    store.remove("a")
    assert not live.exists()


def test_cleanup_removes_orphan_layers(store: ImageStore, tmp_path: Path) -> None:
    image = store.import_rootfs(make_tar(tmp_path / "a.tar", {"a": b"a"}), "a")
    orphan = store.layers_dir / ("0" * 64)
    (orphan / "diff").mkdir(parents=True)
    store.cleanup()
    assert layer_entries(store) == [image.layers[0][7:]]


def test_missing_layer_is_reported(store: ImageStore, tmp_path: Path) -> None:
    image = store.import_rootfs(make_tar(tmp_path / "a.tar", {"a": b"a"}), "a")
    os.rename(store.layer_dir(image.layers[0]), store.layers_dir / "elsewhere")
    with pytest.raises(ImageError, match="missing"):
        store.layer_paths(image)


def test_malformed_index(store: ImageStore) -> None:
    store.root.mkdir(parents=True)
    (store.root / store_module.INDEX).write_text('{"images": [{"id": 1}]}')
    with pytest.raises(ImageError, match="malformed"):
        store.images()
    (store.root / store_module.INDEX).write_text("{")
    with pytest.raises(ImageError, match="cannot read"):
        store.images()
