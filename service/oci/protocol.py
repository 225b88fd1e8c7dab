"""The registry protocol's rules, shared by the check and the client (both on stdlib).

Pure functions: what a HEAD answer means, how a challenge is answered, where a token may
be asked for and what its answer holds. Nothing here does I/O except reading the auth
file and the CA file, and nothing imports requests, so the idle check costs no more than
http.client.
"""

from __future__ import annotations

import base64
import hashlib
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urljoin, urlsplit

from service.errors import PULL_FAILURE_REASONS, ConfigError, SidecarError
from service.oci.auth import Credentials, credentials_for
from service.oci.reference import DIGEST_RE

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MAX_TOKEN_BYTES = 64 * 1024
MAX_CA_FILE_BYTES = 4 * 1024 * 1024  # certifi's whole bundle is about 0.3 MiB
TIMEOUT = (5.0, 30.0)  # connect, and between two reads of a body
MAX_REDIRECTS = 3
REDIRECTS = frozenset({301, 302, 303, 307, 308})
TLS_FAILED = "TLS verification failed (a private CA? see REGISTRY_CA_FILE)"
NUMBER_RE = re.compile(r"[0-9]{1,18}")  # ASCII digits only: str.isdigit() takes "²"
AUTH_PARAM_RE = re.compile(r'(\w+)="([^"]*)"')


class RegistryError(SidecarError):
    """A check, pull or push failed; ``reason`` is a pull failure reason (SPEC 12)."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in PULL_FAILURE_REASONS, reason
        super().__init__(detail, reason)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]


@dataclass
class Stats:
    """What a client sent and received: the tests and the benchmark count with it."""

    requests: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    range_requests: int = 0
    paths: list[str] = field(default_factory=list)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def status_reason(status: int) -> str:
    if status in (401, 403):
        return "auth"
    if status == 404:
        return "not_found"
    return "connection"


def next_url(url: str, location: str, reason: str) -> str:
    """``location`` (a redirect's, an upload session's) resolved against ``url``; a
    RegistryError with ``reason`` when it is no usable URL (not ASCII, not parsable)."""
    try:
        resolved = urljoin(url, location)
        urlsplit(resolved).port  # noqa: B018 - raises on a port that is no number
    except ValueError:
        resolved = ""
    if not resolved or not resolved.isascii() or not resolved.isprintable():
        raise RegistryError(reason, f"unusable Location {location[:80]!r}")
    return resolved


def same_origin(base: str, url: str) -> bool:
    ours, theirs = urlsplit(base), urlsplit(url)
    return (ours.scheme, ours.netloc.lower()) == (theirs.scheme, theirs.netloc.lower())


def descriptor_from_head(
    what: str, target: str, digest: str | None, length: str | None, content_type: str | None
) -> Descriptor:
    """The manifest a 200 answer to HEAD describes, from its three headers."""
    digest = digest or ""
    if not DIGEST_RE.match(digest):
        raise RegistryError("digest_mismatch", f"HEAD {what}: no sha256 digest in the answer")
    if target.startswith("sha256:") and digest != target:
        raise RegistryError("digest_mismatch", f"HEAD {what}: answered for {digest}")
    if length and not NUMBER_RE.fullmatch(length):
        raise RegistryError("connection", f"HEAD {what}: Content-Length is not a number")
    size = int(length) if length else 0
    return Descriptor((content_type or OCI_MANIFEST).split(";")[0], digest, size)


# -- answering a challenge -----------------------------------------------------------------


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="…",service="…"`` -> ("bearer", {realm, service, …})."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(AUTH_PARAM_RE.findall(rest))


def required_credentials(auth_file: Path | None, registry: str) -> Credentials:
    credentials = credentials_for(auth_file, registry)
    if credentials is None:
        raise RegistryError(
            "auth", f"{registry} asks for credentials and {auth_file} has none for it"
        )
    return credentials


def basic_authorization(credentials: Credentials) -> str:
    raw = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def unsupported_challenge(registry: str, scheme: str) -> RegistryError:
    return RegistryError("auth", f"{registry}: unsupported auth challenge {scheme or 'none'}")


def token_url(
    base: str,
    registry: str,
    repository: str,
    actions: str,
    params: Mapping[str, str],
    insecure: frozenset[str],
) -> str:
    """The URL to ask a Bearer challenge's token of (SPEC 12, README "Registries").

    The realm may be another host (Docker Hub's auth.docker.io, GitLab's /jwt/auth): the
    registry's credentials go there, as every Docker client sends them, but only over
    HTTPS, or plain HTTP to the registry itself or a host named in SOURCE_INSECURE.
    """
    realm = next_url(base + "/", params.get("realm", ""), "auth")
    parts = urlsplit(realm)
    plain_ok = same_origin(base, realm) or parts.netloc.lower() in {h.lower() for h in insecure}
    if parts.scheme != "https" and not (parts.scheme == "http" and plain_ok):
        raise RegistryError(
            "auth",
            f"{registry}: token realm {parts.scheme}://{parts.netloc} is not HTTPS "
            "(name it in SOURCE_INSECURE to allow plain HTTP)",
        )
    query = {"service": params.get("service", ""), "scope": f"repository:{repository}:{actions}"}
    separator = "&" if parts.query else "?"
    return realm + separator + urlencode(query)


def token_from_answer(registry: str, status: int, body: bytes) -> str:
    """The token in a realm's answer; an ``auth`` RegistryError when there is none."""
    if status != 200 or len(body) > MAX_TOKEN_BYTES:
        raise RegistryError("auth", f"token {registry}: HTTP {status}")
    import json

    try:
        value: object = json.loads(body)
    except (ValueError, RecursionError):
        value = None
    token = value.get("token") or value.get("access_token") if isinstance(value, dict) else None
    # Printable ASCII: a token goes into a header (latin-1 at most, no CR/LF).
    if not isinstance(token, str) or not token or not (token.isascii() and token.isprintable()):
        raise RegistryError("auth", f"token {registry}: no token in the answer")
    return token


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """Verify a registry with REGISTRY_CA_FILE when set, else with certifi's bundle (as
    requests does for the reload), the same CAs on every machine whatever its system store."""
    if ca_file is None:
        import certifi

        return ssl.create_default_context(cafile=certifi.where())
    return load_ca_file(ca_file)


def load_ca_file(path: Path) -> ssl.SSLContext:
    """REGISTRY_CA_FILE as a TLS context; a ConfigError naming it when it is unusable.

    Read with a cap, so that a file that never ends (``/dev/zero``) cannot hang the start.
    """
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_CA_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"REGISTRY_CA_FILE {path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"REGISTRY_CA_FILE {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_CA_FILE_BYTES:
        raise ConfigError(f"REGISTRY_CA_FILE {path}: larger than {MAX_CA_FILE_BYTES} B")
    if not data.strip():  # an empty cadata would make ssl load the system's CAs instead
        raise ConfigError(f"REGISTRY_CA_FILE {path}: empty")
    try:
        return ssl.create_default_context(cadata=data.decode("ascii"))
    except (UnicodeDecodeError, ssl.SSLError, ValueError):
        raise ConfigError(f"REGISTRY_CA_FILE {path}: no PEM CA certificate in it") from None
