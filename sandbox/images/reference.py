"""Image references: parsing and normalising names with the docker reference grammar.

    reference := name [":" tag] ["@" digest]
    name      := [domain "/"] path          domain := host[:port], or "localhost"
    path      := component ("/" component)* component := [a-z0-9]+ ((\\.|_|__|-+) [a-z0-9]+)*
    tag       := [\\w][\\w.-]{0,127}          digest := algorithm ":" hex

The first component is a domain only when it contains "." or ":" or is "localhost" (the rule
podman and docker share), so "alice/tool" is a path, not a registry. Local names (imports)
default to the domain "localhost" and the tag "latest", as podman does: "busybox" becomes
"localhost/busybox:latest". Invalid names are UsageErrors naming the rule that was broken.
"""

from __future__ import annotations

import dataclasses
import re

from sandbox.errors import UsageError

LOCAL_DOMAIN = "localhost"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?"
)
_PATH_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DIGEST_RE = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
_ID_RE = re.compile(r"(?:sha256:)?([0-9a-f]{3,64})")
_FULL_ID_RE = re.compile(r"[0-9a-f]{64}")


@dataclasses.dataclass(frozen=True)
class Reference:
    """A parsed reference. domain is "" when the text named none (a short name)."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def repository(self) -> str:
        return f"{self.domain}/{self.path}" if self.domain else self.path

    @property
    def short(self) -> bool:
        """True when no domain was given, so the name may match any registry's image."""
        return not self.domain

    def __str__(self) -> str:
        text = self.repository
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def _invalid(text: str, rule: str) -> UsageError:
    return UsageError(
        f"invalid image name {text!r}",
        context=rule,
        hint="names look like NAME[:TAG] or REGISTRY[:PORT]/PATH[:TAG], with "
        "lowercase letters, digits and the separators . _ __ -",
    )


def parse(text: str) -> Reference:
    """Parse text with the docker reference grammar; no defaults are filled in."""
    if not text:
        raise _invalid(text, "the name is empty")
    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST_RE.fullmatch(digest):
            raise _invalid(text, "a digest is ALGORITHM:HEX, e.g. sha256: and 64 hex digits")
        if digest.startswith("sha256:") and not _FULL_ID_RE.fullmatch(digest[7:]):
            raise _invalid(text, "a sha256 digest has exactly 64 lowercase hex digits")
    tag = None
    # A ":" after the last "/" starts the tag; one before it belongs to a registry port.
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG_RE.fullmatch(tag):
            raise _invalid(
                text,
                "a tag is up to 128 letters, digits, '_', '.' and '-', "
                "not starting with '.' or '-'",
            )
    domain, path = _split_domain(rest)
    if domain and not _DOMAIN_RE.fullmatch(domain):
        raise _invalid(text, f"{domain!r} is not a valid registry host[:port]")
    if not path:
        raise _invalid(text, "the repository path is empty")
    for component in path.split("/"):
        if not _PATH_COMPONENT_RE.fullmatch(component):
            if component.lower() != component:
                raise _invalid(text, "repository names must be lowercase")
            raise _invalid(
                text,
                f"path component {component!r} must be lowercase letters and "
                "digits, separated by '.', '_', '__' or '-'",
            )
    if len(rest) > NAME_TOTAL_LENGTH_MAX:
        raise _invalid(
            text, f"the repository name is longer than {NAME_TOTAL_LENGTH_MAX} characters"
        )
    return Reference(domain=domain, path=path, tag=tag, digest=digest)


def _split_domain(name: str) -> tuple[str, str]:
    slash = name.find("/")
    if slash == -1:
        return "", name
    first = name[:slash]
    if "." in first or ":" in first or first == LOCAL_DOMAIN:
        return first, name[slash + 1 :]
    return "", name


def normalize(text: str, domain: str = LOCAL_DOMAIN) -> Reference:
    """parse() with podman's defaults: the domain (localhost for local names) and tag latest.

    A reference with only a digest keeps no tag (name@sha256:... names exactly one image).
    """
    ref = parse(text)
    tag = ref.tag if ref.tag is not None or ref.digest is not None else DEFAULT_TAG
    return Reference(domain=ref.domain or domain, path=ref.path, tag=tag, digest=ref.digest)


def local_name(text: str) -> str:
    """The name an imported image is stored under: 'busybox' -> 'localhost/busybox:latest'."""
    ref = parse(text)
    if ref.digest is not None:
        raise _invalid(text, "an imported image is named with a tag, not a digest")
    if not ref.domain and _FULL_ID_RE.fullmatch(ref.path):
        raise _invalid(text, "a 64-digit hexadecimal name would be mistaken for an image id")
    return str(normalize(text))


def id_prefix(text: str) -> str | None:
    """The hex of text when it could be an image id or id prefix (3+ hex digits), else None."""
    match = _ID_RE.fullmatch(text)
    return match.group(1) if match else None


def split_name(name: str) -> tuple[str, str]:
    """A stored name's (repository, tag): 'localhost/busybox:latest' -> ('localhost/busybox',
    'latest'). Stored names always carry a tag."""
    ref = parse(name)
    return ref.repository, ref.tag or (ref.digest or "")


def matches_short(stored: str, ref: Reference) -> bool:
    """True when the short reference ref (no domain) names the stored name: the repository
    path ends with '/' + ref.path and the tag is the same (busybox -> localhost/busybox:latest,
    or docker.io/library/busybox:latest)."""
    want_tag = ref.tag if ref.tag is not None else DEFAULT_TAG
    try:
        stored_ref = parse(stored)
    except UsageError:
        return False
    return stored_ref.repository.endswith("/" + ref.path) and stored_ref.tag == want_tag
