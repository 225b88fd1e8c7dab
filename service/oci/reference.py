"""``oci://REGISTRY/REPO:TAG`` and ``…@sha256:<hex>`` references, and SOURCE_INSECURE."""

from __future__ import annotations

import re
from dataclasses import dataclass

from service.errors import ConfigError

SCHEME = "oci://"
REGISTRY_RE = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}"
    r"[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?\Z"
)
COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REPOSITORY_RE = re.compile(rf"^{COMPONENT}(?:/{COMPONENT})*\Z")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}\Z")
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}\Z")
MAX_REFERENCE = 1024


@dataclass(frozen=True)
class Reference:
    """A parsed reference: ``digest`` pins it; else ``tag`` is followed."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def target(self) -> str:
        """What to ask the registry for: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        suffix = f"@{self.digest}" if self.digest else f":{self.tag}"
        return f"{SCHEME}{self.registry}/{self.repository}{suffix}"


def _split_target(rest: str) -> tuple[str, str | None, str | None]:
    digest = None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not DIGEST_RE.match(digest):
            raise ValueError(f"digest {digest!r} is not sha256:<64 lowercase hex>")
    tag = None
    last = rest.rsplit("/", 1)[-1]
    if ":" in last:
        rest, tag = rest.rsplit(":", 1)
        if not TAG_RE.match(tag):
            raise ValueError(f"tag {tag!r} is not a valid tag")
    if tag is None and digest is None:
        raise ValueError("a :TAG or @sha256:<hex> is required")
    return rest, tag, digest


def parse_reference(text: str, require_scheme: bool = True) -> Reference:
    """Parse ``[oci://]REGISTRY/REPO(:TAG|@sha256:HEX)``; ValueError says what is wrong.

    The first path component is always the registry (there is no default registry), so
    ``host:port`` works and ``library/x`` is never silently sent to Docker Hub.
    """
    if len(text) > MAX_REFERENCE or any(c.isspace() for c in text):
        raise ValueError("too long or contains whitespace")
    if text.startswith(SCHEME):
        text = text[len(SCHEME) :]
    elif require_scheme:
        raise ValueError(f"must start with {SCHEME}")
    registry, sep, rest = text.partition("/")
    if not sep or not REGISTRY_RE.match(registry):
        raise ValueError(f"registry {registry!r} is not a host or host:port")
    repository, tag, digest = _split_target(rest)
    if not REPOSITORY_RE.match(repository) or len(repository) > 255:
        raise ValueError(f"repository {repository!r} is not a valid repository name")
    return Reference(registry.lower(), repository, tag, digest)


def source_reference(value: str) -> Reference:
    """SOURCE as a Reference; a ConfigError naming SOURCE when it is not one."""
    try:
        return parse_reference(value)
    except ValueError as exc:
        raise ConfigError(f"SOURCE: {exc}") from None


def parse_insecure(value: str | None) -> frozenset[str]:
    """SOURCE_INSECURE: comma-separated ``host:port`` reached over plain HTTP."""
    hosts = set()
    for item in (value or "").split(","):
        host = item.strip().lower()
        if not host:
            continue
        if "/" in host or not REGISTRY_RE.match(host):
            raise ConfigError(f"SOURCE_INSECURE: {item.strip()!r} is not a host or host:port")
        hosts.add(host)
    return frozenset(hosts)


def base_url(registry: str, insecure: frozenset[str]) -> str:
    scheme = "http" if registry.lower() in {h.lower() for h in insecure} else "https"
    return f"{scheme}://{registry}"
