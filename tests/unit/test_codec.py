"""The dataclass JSON codec round-trips a whole ContainerSpec."""

from __future__ import annotations

import json
from pathlib import Path

from sandbox import codec, spec
from sandbox.rootless.idmap import IdMapping, IdRange


def test_container_spec_round_trips_through_json(tmp_path: Path) -> None:
    mapping = IdMapping(
        (IdRange(0, 1000, 1), IdRange(1, 100000, 65536)), (IdRange(0, 1000, 1),), single_reason=None
    )
    built = spec.build(
        spec.RunOptions(
            "img", ("sh", "-c", "true"), volumes=(f"{tmp_path}:/v:ro",), tmpfs=("/t",), tty=True
        ),
        container_id="c" * 64,
        name="n",
        image_config={"Env": ["A=1"]},
        image_id="d" * 64,
        root=spec.Root("overlay", tmp_path / "m", (tmp_path,), tmp_path / "u", tmp_path / "w"),
        mapping=mapping,
        etc_dir=tmp_path / "etc",
    )
    text = json.dumps(codec.to_json(built))
    assert codec.from_json(spec.ContainerSpec, json.loads(text)) == built


def test_unknown_keys_are_ignored_and_missing_ones_default() -> None:
    data = {"inside": 0, "outside": 5, "size": 1, "from_the_future": True}
    assert codec.from_json(IdRange, data) == IdRange(0, 5, 1)
    assert codec.from_json(IdMapping, {"uids": [], "gids": []}).single_reason is None
