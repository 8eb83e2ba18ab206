"""Image reference parsing and local-name normalisation (the docker reference grammar)."""

from __future__ import annotations

import pytest

from sandbox.errors import UsageError
from sandbox.images import reference
from sandbox.images.reference import Reference

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("busybox", Reference("", "busybox")),
        ("busybox:1.36", Reference("", "busybox", "1.36")),
        ("alice/tool:v_1.2-rc", Reference("", "alice/tool", "v_1.2-rc")),
        ("localhost/busybox", Reference("localhost", "busybox")),
        ("registry.example:5000/a/b:tag", Reference("registry.example:5000", "a/b", "tag")),
        ("localhost:5000/x", Reference("localhost:5000", "x")),
        ("docker.io/library/debian:bookworm", Reference("docker.io", "library/debian", "bookworm")),
        (f"busybox@{DIGEST}", Reference("", "busybox", None, DIGEST)),
        (f"quay.io/a/b:t@{DIGEST}", Reference("quay.io", "a/b", "t", DIGEST)),
        ("a__b/c--d/e.f_g", Reference("", "a__b/c--d/e.f_g")),
        ("[::1]:5000/x", Reference("[::1]:5000", "x")),
    ],
)
def test_parse(text: str, expected: Reference) -> None:
    assert reference.parse(text) == expected
    assert str(reference.parse(text)) == text


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("", "empty"),
        ("Busybox", "lowercase"),
        ("alice/Tool", "lowercase"),
        ("busybox:", "tag"),
        ("busybox:-x", "tag"),
        ("busybox:.x", "tag"),
        ("busybox:" + "a" * 129, "tag"),
        ("a//b", "path component"),
        ("a/b_", "path component"),
        ("-a", "path component"),
        ("busybox@sha256:123", "digest"),
        ("busybox@md5", "digest"),
        ("ex ample/x", "path component"),
        ("-bad.example/x", "registry"),
        ("a" * 256, "longer than 255"),
    ],
)
def test_parse_rejects(text: str, rule: str) -> None:
    with pytest.raises(UsageError) as caught:
        reference.parse(text)
    assert rule in str(caught.value)
    assert caught.value.hint


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("busybox", "localhost/busybox:latest"),
        ("busybox:1.36", "localhost/busybox:1.36"),
        ("alice/tool", "localhost/alice/tool:latest"),
        ("localhost/x:y", "localhost/x:y"),
        ("registry.example:5000/a/b", "registry.example:5000/a/b:latest"),
        ("docker.io/library/busybox", "docker.io/library/busybox:latest"),
    ],
)
def test_local_name(text: str, stored: str) -> None:
    assert reference.local_name(text) == stored


def test_local_name_refuses_digests_and_ids() -> None:
    with pytest.raises(UsageError, match="digest"):
        reference.local_name(f"busybox@{DIGEST}")
    with pytest.raises(UsageError, match="image id"):
        reference.local_name("ab" * 32)


def test_normalize_keeps_a_digest_without_tag() -> None:
    assert str(reference.normalize(f"x@{DIGEST}")) == f"localhost/x@{DIGEST}"


def test_short_name_matching() -> None:
    ref = reference.parse("busybox")
    assert reference.matches_short("localhost/busybox:latest", ref)
    assert reference.matches_short("docker.io/library/busybox:latest", ref)
    assert not reference.matches_short("docker.io/library/busybox:1.36", ref)
    assert not reference.matches_short("localhost/notbusybox:latest", ref)
    assert reference.matches_short(
        "docker.io/library/busybox:1.36", reference.parse("busybox:1.36")
    )
    assert reference.matches_short(
        "docker.io/library/busybox:latest", reference.parse("library/busybox")
    )


def test_id_prefix_and_split() -> None:
    assert reference.id_prefix("abc") == "abc"
    assert reference.id_prefix("sha256:abc1") == "abc1"
    assert reference.id_prefix("ab") is None
    assert reference.id_prefix("xyz") is None
    assert reference.split_name("localhost/busybox:latest") == ("localhost/busybox", "latest")
    assert reference.split_name("registry:5000/a:b") == ("registry:5000/a", "b")
