"""User settings and XDG paths: one frozen Settings object, built once and passed down.

Paths: images and containers live under $XDG_DATA_HOME/sandbox (default ~/.local/share/sandbox);
live state (locks, pids, probe caches) under $XDG_RUNTIME_DIR/sandbox, or, when that is unset or
unusable, a 0700 directory /tmp/sandbox-UID. Settings come from /etc/sandbox/config.yaml, then
$XDG_CONFIG_HOME/sandbox/config.yaml; the later file wins key by key. Unknown keys and wrong types
are errors naming the file and key. yaml is imported only when a settings file exists.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sandbox.errors import ConfigError, HostError

SYSTEM_CONFIG = Path("/etc/sandbox/config.yaml")

STORAGE_DRIVERS = ("auto", "overlay", "fuse-overlay", "vfs")
USERNS_MODES = ("auto", "subids", "single", "keep-id")
CGROUPS_MODES = ("enabled", "disabled")
CGROUP_MANAGERS = ("auto", "systemd", "cgroupfs", "disabled")
NETWORK_MODES = ("auto", "slirp4netns", "pasta", "host", "none")
LOG_DRIVERS = ("k8s-file", "none")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything configurable, with the file each value came from."""

    data_root: Path
    runtime_root: Path
    storage_driver: str = "auto"
    userns: str = "auto"
    cgroups: str = "enabled"  # disabled: run without a cgroup; limits warn, not enforced
    cgroup_manager: str = "auto"  # auto: systemd user manager, else a delegated cgroup
    default_hostname: str | None = None
    network_mode: str = "auto"  # auto: slirp4netns where installed, else pasta, else none
    default_capabilities: tuple[str, ...] | None = None  # None: podman's rootless default
    seccomp_profile: str | None = None  # a JSON profile's path; None: the built-in default
    log_driver: str = "k8s-file"
    registries_file: str | None = None  # None: $XDG_CONFIG_HOME/sandbox/registries.yaml
    # key -> where its value came from: a file path, or "env VAR"; absent keys are defaults.
    sources: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def storage_root(self) -> Path:
        return self.data_root / "storage"

    @property
    def containers_root(self) -> Path:
        return self.data_root / "containers"


# key -> (type, allowed values or None)
_KEYS: dict[str, tuple[type, tuple[str, ...] | None]] = {
    "storage_driver": (str, STORAGE_DRIVERS),
    "userns": (str, USERNS_MODES),
    "cgroups": (str, CGROUPS_MODES),
    "cgroup_manager": (str, CGROUP_MANAGERS),
    "data_root": (str, None),
    "default_hostname": (str, None),
    "network_mode": (str, NETWORK_MODES),
    "default_capabilities": (list, None),  # a list of capability names
    "seccomp_profile": (str, None),
    "log_driver": (str, LOG_DRIVERS),
    "registries_file": (str, None),
}


def _home() -> Path:
    home = os.environ.get("HOME")
    if home:
        return Path(home)
    import pwd

    return Path(pwd.getpwuid(os.getuid()).pw_dir)


def data_home() -> Path:
    xdg = os.environ.get("XDG_DATA_HOME")
    return Path(xdg) if xdg and os.path.isabs(xdg) else _home() / ".local" / "share"


def config_home() -> Path:
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return Path(xdg) if xdg and os.path.isabs(xdg) else _home() / ".config"


def runtime_root() -> Path:
    """$XDG_RUNTIME_DIR/sandbox when it belongs to us, else a private /tmp/sandbox-UID."""
    uid = os.getuid()
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg):
        try:
            st = os.stat(xdg)
            if st.st_uid == uid and os.access(xdg, os.W_OK):
                return private_dir(Path(xdg) / "sandbox")
        except OSError:
            pass
    return private_dir(Path(f"/tmp/sandbox-{uid}"))


def private_dir(path: Path) -> Path:
    """Create path 0700 and check nobody else owns it (a /tmp squatter would see our state)."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(path)
    except OSError as e:
        raise HostError(
            f"cannot create the state directory {path}",
            context=e.strerror,
            hint="set XDG_RUNTIME_DIR to a directory you own",
        ) from e
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise HostError(
            f"{path} is not a directory owned by you",
            hint="remove it, or set XDG_RUNTIME_DIR to a directory you own",
        )
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def user_config_file() -> Path:
    return config_home() / "sandbox" / "config.yaml"


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ConfigError(f"cannot read {path}", context=e.strerror) from e
    import yaml

    try:
        # compose keeps each key's line (node marks) for the error messages below.
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML", context=str(e).replace("\n", " ")) from e
    if doc is None:
        return {}
    if not isinstance(doc, dict) or not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{path} must hold a mapping of settings, not {type(doc).__name__}")
    lines = {k.value: k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.Node)}
    for key, value in doc.items():
        where = f"{path}:{lines.get(key, '?')}"
        if key not in _KEYS:
            known = ", ".join(sorted(_KEYS))
            raise ConfigError(f"{where}: unknown key {key!r}", hint=f"known keys: {known}")
        kind, allowed = _KEYS[key]
        if not isinstance(value, kind) or (
            isinstance(value, list) and not all(isinstance(v, str) for v in value)
        ):
            what = "list of strings" if kind is list else kind.__name__
            raise ConfigError(f"{where}: {key} must be a {what}, not {value!r}")
        if allowed is not None and value not in allowed:
            raise ConfigError(f"{where}: {key} must be one of {', '.join(allowed)}, not {value!r}")
        if isinstance(value, list):
            doc[key] = tuple(value)
    return doc


def load(files: list[Path] | None = None) -> Settings:
    """Settings from the system file, then the user's file (later wins), then defaults."""
    if files is None:
        files = [SYSTEM_CONFIG, user_config_file()]
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for path in files:
        for key, value in _read_file(path).items():
            values[key] = value
            sources[key] = str(path)
    data_root = Path(values.pop("data_root", data_home() / "sandbox")).expanduser()
    if not data_root.is_absolute():
        raise ConfigError(f"data_root must be an absolute path, not {data_root}")
    return Settings(data_root=data_root, runtime_root=runtime_root(), sources=sources, **values)
