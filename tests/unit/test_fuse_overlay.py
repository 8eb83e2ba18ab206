"""fuse_overlay: the id shift that shows layers with their owners; the storage fallback order."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.config import Settings
from sandbox.errors import ContainerError
from sandbox.rootless import features, fuse_overlay, idmap
from sandbox.rootless.idmap import IdRange
from sandbox.runtime import container

STORAGE = (IdRange(0, 1001, 1), IdRange(1, 100000, 65536))


def _shown(shift: fuse_overlay.Shift, seen: int) -> int | None:
    for inside, shown, count in shift:
        if inside <= seen < inside + count:
            return shown + seen - inside
    return None


def test_keep_id_shift_undoes_the_reordering() -> None:
    container = idmap._keep(STORAGE, 1001)
    shift = fuse_overlay.shift(STORAGE, container)
    assert shift == ((0, 1, 1001), (1001, 0, 1), (1002, 1002, 64535))
    # Every image id N: stored on the host as storage(N), seen in the container's namespace
    # as container^-1(storage(N)), shown as N again.
    inverse = {r.outside + i: r.inside + i for r in container for i in range(r.size)}
    for image_id in (0, 1, 42, 1000, 1001, 1002, 65535, 65536):
        host = idmap._to_host(STORAGE, image_id)
        assert host is not None
        assert _shown(shift, inverse[host]) == image_id


def test_keep_id_shift_for_a_uid_beyond_the_range_and_split_subids() -> None:
    storage = (IdRange(0, 70000, 1), IdRange(1, 100000, 10), IdRange(11, 200000, 5))
    container = idmap._keep(storage, 70000)
    shift = fuse_overlay.shift(storage, container)
    # The user's uid is above every subordinate id mapped: nothing is reordered but root.
    assert sum(count for _, _, count in shift) == 16
    assert _shown(shift, 70000) == 0
    assert [_shown(shift, seen) for seen in range(15)] == list(range(1, 16))


def test_options_are_joined() -> None:
    assert fuse_overlay.option(((0, 1, 1001), (1001, 0, 1))) == "0:1:1001:1001:0:1"
    argv = fuse_overlay.arguments([Path("/l/a"), Path("/l/b")], ((1001, 0, 1),), ((5, 6, 7),))
    assert argv == [
        "fuse-overlayfs",
        "-o",
        "lowerdir=/l/b:/l/a,uidmapping=1001:0:1,gidmapping=5:6:7",
    ]
    with pytest.raises(ContainerError, match="contains ',' or ':'"):
        fuse_overlay.arguments([Path("/home/a,b/layer")], (), ())


@pytest.mark.parametrize(
    ("overlay", "fuse", "expected"),
    [(True, True, "overlay"), (False, True, "fuse-overlay"), (False, False, "vfs")],
)
def test_auto_driver_falls_back_to_fuse_overlayfs_then_a_copy(
    monkeypatch: pytest.MonkeyPatch, overlay: bool, fuse: bool, expected: str
) -> None:
    works = {"overlay_userns": overlay, "fuse-overlayfs": fuse, "fuse": fuse}
    monkeypatch.setattr(
        features, "probe", lambda name, **_: features.Probe(name, works[name], "probed")
    )
    settings = Settings(data_root=Path("/nonexistent"), runtime_root=Path("/nonexistent"))
    assert container.storage_driver(settings) == expected
