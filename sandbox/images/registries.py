"""Where an image name is pulled from: short-name aliases, search registries, mirrors, insecure.

podman's registries.conf semantics, written in YAML at $XDG_CONFIG_HOME/sandbox/registries.yaml:

    unqualified-search-registries: [docker.io]
    aliases: {ubuntu: docker.io/library/ubuntu}
    registries:
      - prefix: docker.io
        location: registry-1.docker.io      # optional: where the prefix really lives
        insecure: false                     # plain HTTP / unverified TLS allowed
        blocked: false
        mirrors: [{location: "127.0.0.1:5000", insecure: true}]

A short name ("ubuntu") resolves through the user's aliases, then the built-in table, then
each unqualified search registry in order; there is never a prompt. For a fully qualified name,
the registry entry with the longest matching prefix supplies mirrors (tried in order) and then
the registry itself. Unknown keys are errors naming the key. yaml is imported only when the
file exists.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from sandbox.errors import ConfigError, UsageError
from sandbox.images import reference

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"

# Well-known short names, so `sandbox run ubuntu` works with no configuration and no prompt
# (podman ships the same idea as /etc/containers/registries.conf.d/shortnames.conf).
BUILTIN_ALIASES: dict[str, str] = {
    name: f"docker.io/library/{name}"
    for name in (
        "alpine",
        "busybox",
        "debian",
        "ubuntu",
        "fedora",
        "centos",
        "archlinux",
        "amazonlinux",
        "rockylinux",
        "almalinux",
        "opensuse/leap",
        "python",
        "node",
        "golang",
        "rust",
        "nginx",
        "httpd",
        "redis",
        "postgres",
        "mysql",
        "mariadb",
        "registry",
        "hello-world",
    )
}
BUILTIN_ALIASES["opensuse/leap"] = "docker.io/opensuse/leap"

_TOP_KEYS = ("unqualified-search-registries", "aliases", "registries")
_REGISTRY_KEYS = ("prefix", "location", "insecure", "blocked", "mirrors")
_MIRROR_KEYS = ("location", "insecure")


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """One place to fetch a repository from: host[:port] and the path there."""

    host: str
    path: str
    insecure: bool = False
    mirror: bool = False

    def __str__(self) -> str:
        return f"{self.host}/{self.path}"


@dataclasses.dataclass(frozen=True)
class Mirror:
    location: str
    insecure: bool = False


@dataclasses.dataclass(frozen=True)
class RegistryEntry:
    prefix: str
    location: str | None = None
    insecure: bool = False
    blocked: bool = False
    mirrors: tuple[Mirror, ...] = ()


@dataclasses.dataclass(frozen=True)
class RegistriesConfig:
    search: tuple[str, ...] = (DOCKER_HUB,)
    aliases: dict[str, str] = dataclasses.field(default_factory=dict)
    registries: tuple[RegistryEntry, ...] = ()
    source: str | None = None

    def resolve(self, text: str) -> list[reference.Reference]:
        """The fully qualified references text may name, in the order to try them."""
        ref = reference.parse(text)
        if not ref.short:
            return [_qualify(ref, ref.domain)]
        alias = self.aliases.get(ref.path) or BUILTIN_ALIASES.get(ref.path)
        if alias is not None:
            target = reference.parse(alias)
            return [
                _qualify(
                    reference.Reference(target.domain, target.path, ref.tag, ref.digest),
                    target.domain,
                )
            ]
        if not self.search:
            raise UsageError(
                f"short name {text!r} has no alias and no search registries are configured",
                hint="use a full name (registry/path:tag), or add an alias or "
                "unqualified-search-registries to registries.yaml",
            )
        return [_qualify(ref, domain) for domain in self.search]

    def endpoints(
        self, ref: reference.Reference, *, tls_verify: bool | None = None
    ) -> list[Endpoint]:
        """Where to fetch the fully qualified ref from: mirrors in order, then the registry.

        tls_verify=False allows plain HTTP everywhere for this call; None follows the file.
        """
        entry = self._entry(ref.repository)
        if entry is not None and entry.blocked:
            raise UsageError(
                f"registry {entry.prefix} is blocked",
                context=self.source or "registries.yaml",
                hint="remove 'blocked: true' from its entry",
            )
        insecure_all = tls_verify is False
        found: list[Endpoint] = []
        rest = ref.repository
        if entry is not None:
            rest = ref.repository[len(entry.prefix) :].lstrip("/")
            for mirror in entry.mirrors:
                host, _, base = mirror.location.partition("/")
                found.append(
                    Endpoint(
                        host,
                        f"{base}/{rest}" if base else rest,
                        insecure=mirror.insecure or insecure_all,
                        mirror=True,
                    )
                )
            location = entry.location or entry.prefix
            host, _, base = location.partition("/")
            path = f"{base}/{rest}" if base else rest
            if host == DOCKER_HUB:
                host = DOCKER_HUB_API
            found.append(Endpoint(host, path, insecure=entry.insecure or insecure_all))
            return found
        host = DOCKER_HUB_API if ref.domain == DOCKER_HUB else ref.domain
        found.append(Endpoint(host, ref.path, insecure=insecure_all))
        return found

    def _entry(self, repository: str) -> RegistryEntry | None:
        best: RegistryEntry | None = None
        for entry in self.registries:
            prefix = entry.prefix.rstrip("/")
            if (repository == prefix or repository.startswith(prefix + "/")) and (
                best is None or len(prefix) > len(best.prefix)
            ):
                best = entry
        return best


def _qualify(ref: reference.Reference, domain: str) -> reference.Reference:
    path = ref.path
    if domain == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    tag = ref.tag if ref.tag is not None or ref.digest is not None else reference.DEFAULT_TAG
    return reference.Reference(domain, path, tag, ref.digest)


def config_file() -> Path:
    from sandbox import config

    return config.config_home() / "sandbox" / "registries.yaml"


def load(path: Path | None = None) -> RegistriesConfig:
    """The user's registries.yaml, or the defaults when there is none."""
    path = path or config_file()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return RegistriesConfig()
    except OSError as e:
        raise ConfigError(f"cannot read {path}", context=e.strerror) from e
    import yaml

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML", context=str(e).replace("\n", " ")) from e
    return parse(doc, str(path))


def parse(doc: Any, source: str) -> RegistriesConfig:
    """A RegistriesConfig from a parsed YAML document; every key and type is checked."""
    if doc is None:
        return RegistriesConfig(source=source)
    _check_keys(doc, _TOP_KEYS, source, "the top level")
    search = tuple(
        _host(v, source, "unqualified-search-registries")
        for v in _list(
            doc.get("unqualified-search-registries", [DOCKER_HUB]),
            source,
            "unqualified-search-registries",
        )
    )
    aliases_doc = doc.get("aliases", {})
    if not isinstance(aliases_doc, dict):
        raise ConfigError(f"{source}: aliases must be a mapping of short name to image name")
    aliases: dict[str, str] = {}
    for name, target in aliases_doc.items():
        if not isinstance(name, str) or not isinstance(target, str):
            raise ConfigError(f"{source}: aliases: {name!r} must map a name to a string")
        try:
            parsed = reference.parse(target)
        except UsageError as e:
            raise ConfigError(f"{source}: aliases: {name}: {e}") from e
        if parsed.short:
            raise ConfigError(
                f"{source}: aliases: {name} -> {target} is not fully qualified",
                hint="name the registry, e.g. docker.io/library/ubuntu",
            )
        aliases[name] = target
    entries = []
    for i, item in enumerate(_list(doc.get("registries", []), source, "registries")):
        where = f"registries[{i}]"
        _check_keys(item, _REGISTRY_KEYS, source, where)
        prefix = item.get("prefix", item.get("location"))
        if not isinstance(prefix, str) or not prefix:
            raise ConfigError(f"{source}: {where} needs a prefix (or a location)")
        location = item.get("location")
        if location is not None and not isinstance(location, str):
            raise ConfigError(f"{source}: {where}.location must be a string")
        mirrors = []
        for j, m in enumerate(_list(item.get("mirrors", []), source, f"{where}.mirrors")):
            mwhere = f"{where}.mirrors[{j}]"
            _check_keys(m, _MIRROR_KEYS, source, mwhere)
            if not isinstance(m.get("location"), str) or not m["location"]:
                raise ConfigError(f"{source}: {mwhere} needs a location")
            mirrors.append(Mirror(m["location"], _bool(m.get("insecure", False), source, mwhere)))
        entries.append(
            RegistryEntry(
                prefix=prefix.rstrip("/"),
                location=location,
                insecure=_bool(item.get("insecure", False), source, f"{where}.insecure"),
                blocked=_bool(item.get("blocked", False), source, f"{where}.blocked"),
                mirrors=tuple(mirrors),
            )
        )
    return RegistriesConfig(
        search=search, aliases=aliases, registries=tuple(entries), source=source
    )


def _check_keys(doc: Any, known: tuple[str, ...], source: str, where: str) -> None:
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: {where} must be a mapping")
    for key in doc:
        if key not in known:
            raise ConfigError(
                f"{source}: unknown key {key!r} in {where}", hint=f"known keys: {', '.join(known)}"
            )


def _list(value: Any, source: str, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(f"{source}: {where} must be a list")
    return value


def _bool(value: Any, source: str, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{source}: {where} must be true or false")
    return value


def _host(value: Any, source: str, where: str) -> str:
    if not isinstance(value, str) or not value or "/" in value:
        raise ConfigError(f"{source}: {where}: {value!r} is not a registry host[:port]")
    return value
