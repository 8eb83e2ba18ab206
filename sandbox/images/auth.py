"""Registry credentials: the auth.json format podman and docker use, read and written.

Read, first match wins: $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json (podman's
default and where `sandbox login` writes), $XDG_CONFIG_HOME/containers/auth.json,
~/.docker/config.json. Each holds {"auths": {"REGISTRY": {"auth": base64("user:password")}}}.
The file is written 0600 through a temporary name. Credentials are never printed: Credentials'
repr hides the secret, so they cannot leak into a traceback or a log line.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from sandbox.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Credentials:
    username: str
    password: str = dataclasses.field(repr=False)

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


def write_path() -> Path:
    explicit = os.environ.get("REGISTRY_AUTH_FILE")
    if explicit:
        return Path(explicit)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return Path(runtime) / "containers" / "auth.json"
    from sandbox import config

    return config.config_home() / "containers" / "auth.json"


def read_paths() -> list[Path]:
    from sandbox import config

    paths = [write_path(), config.config_home() / "containers" / "auth.json"]
    paths.append(config._home() / ".docker" / "config.json")
    unique: list[Path] = []
    for p in paths:
        if p not in unique:
            unique.append(p)
    return unique


def _keys(registry: str) -> list[str]:
    keys = [registry]
    if registry in ("docker.io", "registry-1.docker.io", "index.docker.io"):
        keys += [
            "docker.io",
            "https://index.docker.io/v1/",
            "index.docker.io",
            "registry-1.docker.io",
        ]
    return keys


def lookup(registry: str) -> Credentials | None:
    """The stored credentials for registry (host[:port]), or None."""
    for path in read_paths():
        auths = _read(path).get("auths", {})
        if not isinstance(auths, dict):
            continue
        for key in _keys(registry):
            entry = auths.get(key)
            if isinstance(entry, dict) and isinstance(entry.get("auth"), str):
                return _decode(entry["auth"], path, key)
    return None


def _decode(encoded: str, path: Path, key: str) -> Credentials:
    try:
        user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: the auth entry for {key} is not base64 of user:password") from e
    if not sep:
        raise ConfigError(f"{path}: the auth entry for {key} is not base64 of user:password")
    return Credentials(user, password)


def store(registry: str, credentials: Credentials) -> Path:
    """Save credentials for registry in the auth file (0600); returns the file."""
    path = write_path()
    doc = _read(path)
    auths = doc.setdefault("auths", {})
    if not isinstance(auths, dict):
        raise ConfigError(f"{path}: 'auths' must be a mapping")
    raw = f"{credentials.username}:{credentials.password}".encode()
    auths[registry] = {"auth": base64.b64encode(raw).decode()}
    _write(path, doc)
    return path


def remove(registry: str) -> bool:
    """Forget registry's credentials; False when there were none."""
    path = write_path()
    doc = _read(path)
    auths = doc.get("auths")
    if not isinstance(auths, dict) or registry not in auths:
        return False
    del auths[registry]
    _write(path, doc)
    return True


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read credentials from {path}", context=str(e)) from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    return data


def _write(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
