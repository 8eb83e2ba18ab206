"""Generated container names, adjective_noun as podman and docker make them."""

from __future__ import annotations

import secrets

_ADJECTIVES = (
    "admiring", "agile", "amazing", "bold", "brave", "busy", "calm", "careful", "clever",
    "cool", "crisp", "eager", "elastic", "epic", "fervent", "focused", "gentle", "happy",
    "hopeful", "jolly", "keen", "kind", "lucid", "modest", "nifty", "noble", "patient",
    "quiet", "quirky", "relaxed", "serene", "sharp", "steady", "sturdy", "swift", "tender",
    "tidy", "upbeat", "vivid", "wise", "witty", "zen",
)
_NOUNS = (
    "babbage", "bell", "cerf", "curie", "darwin", "dijkstra", "einstein", "euler", "fermat",
    "feynman", "galois", "gauss", "hamilton", "hopper", "hypatia", "kepler", "knuth",
    "lamport", "liskov", "lovelace", "maxwell", "meitner", "newton", "noether", "pascal",
    "ritchie", "shannon", "thompson", "torvalds", "turing", "wozniak", "yalow",
)


def generate() -> str:
    return f"{secrets.choice(_ADJECTIVES)}_{secrets.choice(_NOUNS)}"
