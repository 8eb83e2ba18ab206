"""Settings files: errors name the file, the line and the key; `config show` says where each
value came from."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox import config
from sandbox.cli.config_cmd import effective
from sandbox.errors import ConfigError


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_unknown_key_names_file_line_and_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.yaml", "# comment\nstorage_driver: vfs\n\nnetwrok_mode: pasta\n")
    with pytest.raises(ConfigError) as caught:
        config.load([path])
    assert caught.value.message.startswith(f"{path}:4: unknown key 'netwrok_mode'")
    assert caught.value.hint is not None and "network_mode" in caught.value.hint


def test_wrong_type_and_value_name_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.yaml", "log_driver: none\ndefault_capabilities: CHOWN\n")
    with pytest.raises(ConfigError, match=rf"^{path}:2: default_capabilities must be a list"):
        config.load([path])
    path = _write(tmp_path, "d.yaml", "network_mode: bridge\n")
    with pytest.raises(ConfigError, match=rf"^{path}:1: network_mode must be one of auto"):
        config.load([path])
    path = _write(tmp_path, "e.yaml", "default_capabilities: [CHOWN, 3]\n")
    with pytest.raises(ConfigError, match=r":1: default_capabilities must be a list of strings"):
        config.load([path])


def test_later_file_wins_and_sources_are_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    system = _write(tmp_path, "system.yaml", "network_mode: pasta\nlog_driver: none\n")
    user = _write(
        tmp_path, "user.yaml", "network_mode: none\ndefault_capabilities: [CHOWN, KILL]\n"
    )
    settings = config.load([system, user])
    assert settings.network_mode == "none"
    assert settings.default_capabilities == ("CHOWN", "KILL")
    shown = effective(settings)
    assert shown["network_mode"] == {"value": "none", "source": str(user)}
    assert shown["log_driver"] == {"value": "none", "source": str(system)}
    assert shown["default_capabilities"]["value"] == ["CHOWN", "KILL"]
    assert shown["seccomp_profile"] == {"value": None, "source": "default"}
    assert shown["data_root"] == {
        "value": str(tmp_path / "data" / "sandbox"),
        "source": "env XDG_DATA_HOME",
    }
    assert shown["runtime_root"]["source"] == "env XDG_RUNTIME_DIR"


def test_not_a_mapping(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.yaml", "- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        config.load([path])
