"""Registry credentials from a Docker/OCI auth file (``REGISTRY_AUTH_FILE``).

Only ``auths.<registry>.auth`` (base64 of ``user:password``) is read: credentials
never come from a URL, a flag or the environment. Credential helpers (``credsStore``,
``credHelpers``) run programs and are not supported; a registry without an ``auth``
entry is used anonymously. No secret is ever put in a message.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from pathlib import Path

from service.errors import ConfigError

MAX_AUTH_FILE_BYTES = 1024 * 1024


class AuthFileError(ConfigError):
    """The auth file is unreadable or malformed; the message names it, never a secret."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)


def registry_key(key: str) -> str:
    """The host[:port] of an ``auths`` key (``https://host/v1/`` as Docker writes it)."""
    host = key.split("://", 1)[-1]
    return host.split("/", 1)[0].lower()


def _decode(path: Path, key: str, entry: object) -> Credentials | None:
    if not isinstance(entry, dict) or "auth" not in entry:
        return None
    try:
        user, sep, password = base64.b64decode(entry["auth"], validate=True).decode().partition(":")
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        sep, user, password = "", "", ""
    if not sep or not user:
        raise AuthFileError(
            f"REGISTRY_AUTH_FILE {path}: auths[{key!r}].auth is not base64 of user:password"
        )
    return Credentials(user, password)


def parse_auth_file(path: Path, data: bytes) -> dict[str, Credentials]:
    """Registry host[:port] -> credentials, from the file's bytes."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        raise AuthFileError(f"REGISTRY_AUTH_FILE {path}: not valid JSON") from None
    auths = value.get("auths", {}) if isinstance(value, dict) else None
    if not isinstance(auths, dict):
        raise AuthFileError(f"REGISTRY_AUTH_FILE {path}: auths is not an object")
    found = {}
    for key, entry in auths.items():
        credentials = _decode(path, key, entry)
        if credentials is not None:
            found[registry_key(key)] = credentials
    return found


def credentials_for(path: Path | None, registry: str) -> Credentials | None:
    """The credentials for registry; None when the file or its entry does not exist.

    Read on every call, so a rotated Secret takes effect at the next check.
    """
    if path is None:
        return None
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_AUTH_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AuthFileError(f"REGISTRY_AUTH_FILE {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_AUTH_FILE_BYTES:
        raise AuthFileError(f"REGISTRY_AUTH_FILE {path}: larger than {MAX_AUTH_FILE_BYTES} B")
    return parse_auth_file(path, data).get(registry.lower())
