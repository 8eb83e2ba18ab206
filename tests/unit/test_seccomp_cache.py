"""The per-boot cache of compiled seccomp filters gives exactly what libseccomp compiles."""

from __future__ import annotations

from pathlib import Path

from sandbox.rootless import caps, seccomp


def test_cached_filter_equals_a_fresh_compile_and_is_reused(tmp_path: Path) -> None:
    profile = seccomp.default_profile()
    fresh = seccomp.compile(profile, capabilities=caps.DEFAULT)
    first = seccomp.compile_cached(profile, capabilities=caps.DEFAULT, cache_dir=tmp_path)
    (entry,) = tmp_path.glob("*.bpf")
    assert first == fresh == entry.read_bytes()
    assert seccomp.compile_cached(profile, capabilities=caps.DEFAULT, cache_dir=tmp_path) == fresh


def test_capabilities_are_part_of_the_key(tmp_path: Path) -> None:
    profile = seccomp.default_profile()
    seccomp.compile_cached(profile, capabilities=caps.DEFAULT, cache_dir=tmp_path)
    more = (*caps.DEFAULT, "SYS_ADMIN")
    program = seccomp.compile_cached(profile, capabilities=more, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.bpf"))) == 2
    assert program == seccomp.compile(profile, capabilities=more)


def test_a_truncated_entry_is_ignored_and_replaced(tmp_path: Path) -> None:
    profile = seccomp.default_profile()
    seccomp.compile_cached(profile, capabilities=caps.DEFAULT, cache_dir=tmp_path)
    (entry,) = tmp_path.glob("*.bpf")
    entry.write_bytes(b"\0" * 5)  # not a whole number of 8-byte BPF instructions
    program = seccomp.compile_cached(profile, capabilities=caps.DEFAULT, cache_dir=tmp_path)
    assert program == seccomp.compile(profile, capabilities=caps.DEFAULT)
    assert entry.read_bytes() == program
