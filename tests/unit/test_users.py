"""User resolution from the container's own passwd and group text."""

from __future__ import annotations

import pytest

from sandbox.errors import ContainerError
from sandbox.runtime.users import resolve

PASSWD = """root:x:0:0:root:/root:/bin/sh
# comment
alice:x:1000:1000:Alice:/home/alice:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
broken:x:notanumber:1:::
"""
GROUP = """root:x:0:
alice:x:1000:
staff:x:50:alice,bob
audio:x:29:alice
"""


def test_names_numbers_and_supplementary_groups() -> None:
    alice = resolve("alice", PASSWD, GROUP)
    assert (alice.uid, alice.gid, alice.groups, alice.home) == (1000, 1000, (50, 29), "/home/alice")
    assert resolve("1000", PASSWD, GROUP).name == "alice"
    assert resolve("alice:staff", PASSWD, GROUP).gid == 50
    assert resolve("alice:staff", PASSWD, GROUP).groups == ()
    unknown = resolve("4242:4343", PASSWD, GROUP)
    assert (unknown.uid, unknown.gid, unknown.home, unknown.name) == (4242, 4343, "/", None)
    assert resolve("4242", PASSWD, GROUP).gid == 0


@pytest.mark.parametrize("spec", ["mallory", "alice:nogroup", "broken"])
def test_unknown_or_broken_entries_are_errors(spec: str) -> None:
    with pytest.raises(ContainerError):
        resolve(spec, PASSWD, GROUP)
