"""The wording of durations in `ps`, `images` and `inspect`-like tables (podman's)."""

from __future__ import annotations

import pytest

from sandbox.cli import render


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.2, "Less than a second"),
        (1, "1 second"),
        (1.9, "1 second"),
        (2, "2 seconds"),
        (59, "59 seconds"),
        (60, "About a minute"),
        (119, "About a minute"),
        (120, "2 minutes"),
        (59 * 60, "59 minutes"),
        (3600, "About an hour"),
        (2 * 3600, "2 hours"),
        (47 * 3600, "47 hours"),
        (48 * 3600, "2 days"),
        (13 * 86400, "13 days"),
        (14 * 86400, "2 weeks"),
        (59 * 86400, "8 weeks"),
        (60 * 86400, "2 months"),
        (729 * 86400, "24 months"),
        (730 * 86400, "2 years"),
    ],
)
def test_human_duration_words_it_as_podman_does(seconds: float, text: str) -> None:
    assert render.human_duration(seconds) == text


def test_ago_of_an_unreadable_time_is_unknown() -> None:
    assert render.ago(None) == "unknown"
    assert render.ago("not a time") == "unknown"
    assert render.ago("2000-01-01T00:00:00Z").endswith("years ago")
