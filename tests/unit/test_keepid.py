"""keep-id's mapping and the passwd/group entries it adds (pure logic, plus hostile layers)."""

from __future__ import annotations

import os
from pathlib import Path

from sandbox.rootless import idmap
from sandbox.rootless.idmap import IdRange
from sandbox.runtime import keepid

WHO = keepid.Identity("alice", 1000, 1000, "alice", "/home/alice")


def test_keep_mapping_around_the_users_id() -> None:
    base = (IdRange(0, 1000, 1), IdRange(1, 100000, 65536))
    kept = idmap._keep(base, 1000)
    assert kept == (
        IdRange(0, 100000, 1000),
        IdRange(1000, 1000, 1),
        IdRange(1001, 101000, 64536),
    )
    assert sum(r.size for r in kept) == sum(r.size for r in base)


def test_keep_mapping_several_ranges_and_small_range() -> None:
    base = (IdRange(0, 5, 1), IdRange(1, 200, 3), IdRange(4, 900, 4))
    kept = idmap._keep(base, 5)
    assert kept == (
        IdRange(0, 200, 3),
        IdRange(3, 900, 2),
        IdRange(5, 5, 1),
        IdRange(6, 902, 2),
    )
    # A uid beyond the subordinate range: the ranges first, the user's id on its own.
    assert idmap._keep((IdRange(0, 70000, 1), IdRange(1, 100000, 10)), 70000) == (
        IdRange(0, 100000, 10),
        IdRange(70000, 70000, 1),
    )


def test_passwd_and_group_entries() -> None:
    image = "root:x:0:0:root:/root:/bin/sh\nalice:x:5:5::/:/bin/false\nbob:x:1000:1000::/:/bin/sh\n"
    text = keepid.passwd(image, WHO)
    assert text.splitlines() == [
        "root:x:0:0:root:/root:/bin/sh",
        "alice:x:1000:1000:alice:/home/alice:/bin/sh",
    ]
    assert keepid.group("root:x:0:\n", WHO).splitlines() == ["root:x:0:", "alice:x:1000:"]
    # The image has the gid already: unchanged. Its name taken by another gid: ours is renamed.
    assert keepid.group("users:x:1000:\n", WHO).splitlines() == ["users:x:1000:"]
    clash = keepid.group("alice:x:7:\n", WHO).splitlines()
    assert clash[-1].endswith(":x:1000:") and clash[-1] != "alice:x:1000:"


def test_image_file_top_layer_wins_and_symlinks_stay_inside(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    for layer in (lower, upper):
        (layer / "etc").mkdir(parents=True)
    (lower / "etc" / "passwd").write_text("lower\n")
    assert keepid.read_image_file([upper, lower], "passwd") == "lower\n"
    (upper / "etc" / "passwd").write_text("upper\n")
    assert keepid.read_image_file([upper, lower], "passwd") == "upper\n"
    # A planted absolute symlink resolves inside its layer, never to the host's file.
    secret = tmp_path / "secret"
    secret.write_text("host secret\n")
    (upper / "etc" / "group").symlink_to(secret)
    assert "host secret" not in keepid.read_image_file([upper, lower], "group")
    (upper / "etc" / "group").unlink()
    os.mkfifo(upper / "etc" / "group")  # must not block
    assert keepid.read_image_file([upper, lower], "group") == ""
