"""registries.yaml: short-name resolution, mirrors in order, insecure, unknown keys."""

from __future__ import annotations

import pytest
import yaml

from sandbox.errors import ConfigError
from sandbox.images import registries

DOC = """
unqualified-search-registries: [docker.io, quay.io]
aliases: {ubuntu: docker.io/library/ubuntu}
registries:
  - prefix: docker.io
    mirrors: [{location: "127.0.0.1:5000", insecure: true}, {location: "mirror.example/hub"}]
  - prefix: "127.0.0.1:5000"
    insecure: true
"""


def config() -> registries.RegistriesConfig:
    return registries.parse(yaml.safe_load(DOC), "registries.yaml")


def test_alias_then_mirrors_in_order_then_the_registry() -> None:
    (ref,) = config().resolve("ubuntu:22.04")
    assert str(ref) == "docker.io/library/ubuntu:22.04"
    endpoints = config().endpoints(ref)
    assert [str(e) for e in endpoints] == [
        "127.0.0.1:5000/library/ubuntu",
        "mirror.example/hub/library/ubuntu",
        "registry-1.docker.io/library/ubuntu",
    ]
    assert [e.insecure for e in endpoints] == [True, False, False]


def test_builtin_alias_and_search_registries() -> None:
    assert [str(r) for r in config().resolve("debian")] == ["docker.io/library/debian:latest"]
    assert [str(r) for r in config().resolve("me/tool")] == [
        "docker.io/me/tool:latest",
        "quay.io/me/tool:latest",
    ]


def test_tls_verify_false_makes_every_endpoint_insecure() -> None:
    (ref,) = config().resolve("quay.io/x/y:1")
    assert [(str(e), e.insecure) for e in config().endpoints(ref, tls_verify=False)] == [
        ("quay.io/x/y", True)
    ]


@pytest.mark.parametrize(
    "doc, key",
    [
        ({"unqualified-search": ["docker.io"]}, "unqualified-search"),
        ({"registries": [{"prefix": "a.io", "mirror": []}]}, "mirror"),
        ({"registries": [{"prefix": "a.io", "mirrors": [{"location": "b", "tls": 1}]}]}, "tls"),
    ],
)
def test_unknown_keys_are_errors_naming_the_key(doc: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=repr(key)):
        registries.parse(doc, "registries.yaml")
