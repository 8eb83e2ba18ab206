"""Generated container names, adjective_noun as podman and docker make them."""

from __future__ import annotations

import os

_ADJECTIVES = (
    "admiring",
    "agile",
    "amazing",
    "bold",
    "brave",
    "busy",
    "calm",
    "careful",
    "clever",
    "cool",
    "crisp",
    "eager",
    "elastic",
    "epic",
    "fervent",
    "focused",
    "gentle",
    "happy",
    "hopeful",
    "jolly",
    "keen",
    "kind",
    "lucid",
    "modest",
    "nifty",
    "noble",
    "patient",
    "quiet",
    "quirky",
    "relaxed",
    "serene",
    "sharp",
    "steady",
    "sturdy",
    "swift",
    "tender",
    "tidy",
    "upbeat",
    "vivid",
    "wise",
    "witty",
    "zen",
)
_NOUNS = (
    "babbage",
    "bell",
    "cerf",
    "curie",
    "darwin",
    "dijkstra",
    "einstein",
    "euler",
    "fermat",
    "feynman",
    "galois",
    "gauss",
    "hamilton",
    "hopper",
    "hypatia",
    "kepler",
    "knuth",
    "lamport",
    "liskov",
    "lovelace",
    "maxwell",
    "meitner",
    "newton",
    "noether",
    "pascal",
    "ritchie",
    "shannon",
    "thompson",
    "torvalds",
    "turing",
    "wozniak",
    "yalow",
)


def generate() -> str:
    # os.urandom, not the secrets module: a name is not a secret, and secrets (with hmac,
    # hashlib and random) costs ~5 ms of imports on every run. The modulo bias over 2**16
    # is below 0.1%.
    draw = int.from_bytes(os.urandom(4), "little")
    adjective = _ADJECTIVES[(draw & 0xFFFF) % len(_ADJECTIVES)]
    return f"{adjective}_{_NOUNS[(draw >> 16) % len(_NOUNS)]}"
