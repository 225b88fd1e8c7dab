"""The sidecar's configuration: one frozen dataclass, built and validated in one place.

Precedence is command line > environment > default. Every parser raises
:class:`ConfigError` with a message that names the flag or variable at fault.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from service.errors import ConfigError
from service.interval import DEFAULT_INTERVAL, check_interval
from service.tokens import parse_token_setting

_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})\Z")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("auto", "text", "json")
RELOAD_METHODS = ("POST", "PUT", "PATCH", "GET")


@dataclass(frozen=True)
class Config:
    models_root: Path = Path("/models")
    staging_dir: Path = Path("/models/staging")
    current_link: Path = Path("/models/current")
    manifest_name: str = "manifest.json"
    require_manifest: bool = False
    poll_override: float | None = None
    poll_default: float = DEFAULT_INTERVAL
    reload_url: str | None = "http://127.0.0.1:8000/reload"
    reload_method: str = "POST"
    reload_timeout: float = 10.0
    reload_retries: int = 3
    reload_token: str | None = field(default=None, repr=False)
    reload_token_file: Path | None = None
    reload_verify_url: str | None = None
    rollback_on_reload_failure: bool = False
    keep_versions: int = 3
    keep_rejected: int = 5
    metrics_addr: str = "0.0.0.0"  # noqa: S104 - the metrics port is meant to be scraped
    metrics_port: int = 9177
    log_level: str = "INFO"
    log_format: str = "auto"
    watch: bool = True
    trusted_keys_file: Path | None = None
    source: str | None = None
    source_poll_seconds: float = 60.0
    source_insecure: tuple[str, ...] = ()
    registry_auth_file: Path | None = None  # None: ~/.docker/config.json
    registry_ca_file: Path | None = None  # None: the CA bundle requests ships (certifi)

    def redacted(self) -> dict[str, object]:
        """The effective configuration for the start-up log, secrets replaced."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.reload_token is not None:
            values["reload_token"] = "<redacted>"  # noqa: S105
        for key in ("reload_url", "reload_verify_url"):
            url = values[key]
            if isinstance(url, str) and "@" in urlsplit(url).netloc:  # refused by load_config
                values[key] = _shown_url(url)
        return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}


# -- parsers: (name of the flag or variable, raw text) -> value ---------------------------


def parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise ConfigError(f"{name}: expected true/false/1/0/yes/no, got {raw!r}")


def parse_number(name: str, raw: str, low: float, high: float) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected a number, got {raw!r}") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise ConfigError(f"{name}: must be between {low:g} and {high:g}, got {raw!r}")
    return value


def parse_int(name: str, raw: str, low: int, high: int) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}: expected a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}: must be between {low} and {high}, got {raw!r}")
    return value


def parse_interval(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected a number of seconds, got {raw!r}") from None
    try:
        return check_interval(value)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def parse_choice(name: str, raw: str, choices: tuple[str, ...], upper: bool) -> str:
    value = raw.strip().upper() if upper else raw.strip().lower()
    if value not in choices:
        raise ConfigError(f"{name}: expected one of {', '.join(choices)}, got {raw!r}")
    return value


def _shown_url(raw: str) -> str:
    """``raw`` for an error message, never with the user information of a URL in it."""
    if "@" not in raw:
        return repr(raw)
    value = raw.strip()
    try:
        parts = urlsplit(value)
    except ValueError:
        parts = None
    if parts is None or "@" not in parts.netloc or value.count("@") != parts.netloc.count("@"):
        return "(not shown: it contains '@')"
    host = parts.netloc.rpartition("@")[2]
    return repr(urlunsplit(parts._replace(netloc="<redacted>@" + host)))


def parse_url(name: str, raw: str) -> str:
    value = raw.strip()
    bad_url = ConfigError(f"{name}: expected an http:// or https:// URL, got {_shown_url(raw)}")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError when the port is not a number 0-65535
    except ValueError:
        raise bad_url from None
    if "@" in parts.netloc:
        raise ConfigError(
            f"{name}: credentials in the URL {_shown_url(raw)} are not allowed "
            "(they would be sent instead of the token): use RELOAD_TOKEN_FILE"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise bad_url
    return value


def parse_path(name: str, raw: str) -> Path:
    if not raw.strip() or "\x00" in raw:
        raise ConfigError(f"{name}: expected a path, got {raw!r}")
    return Path(os.path.abspath(raw))


def parse_file_name(name: str, raw: str) -> str:
    if raw in ("", ".", "..", "READY") or "/" in raw or "\x00" in raw:
        raise ConfigError(f"{name}: expected a plain file name (not READY), got {raw!r}")
    return raw


def parse_address(name: str, raw: str) -> str:
    value = raw.strip()
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOSTNAME.match(value):
            raise ConfigError(f"{name}: expected an IP address or host name, got {raw!r}") from None
    return value


def parse_token_file(name: str, raw: str) -> Path:
    """A token file path. It may not exist yet (an optional Secret mounted later: reloads
    fail with a clear message until it does), but if it exists it must be readable."""
    path = parse_path(name, raw)
    if path.exists() and (not path.is_file() or not os.access(path, os.R_OK)):
        raise ConfigError(f"{name}: {path} is not a readable file")
    return path


def parse_source(name: str, raw: str) -> str:
    """An OCI reference ``oci://REGISTRY/REPO:TAG`` or ``…@sha256:<hex>`` (checked in full
    by the pulling code at start); credentials never belong in it."""
    value = raw.strip()
    rest = value.removeprefix("oci://")
    if rest == value or "/" not in rest or "@" in rest.split("/", 1)[0]:
        raise ConfigError(
            f"{name}: expected oci://REGISTRY/REPOSITORY:TAG or "
            f"oci://REGISTRY/REPOSITORY@sha256:<hex>, got {value[:120]!r}"
        )
    return value


def parse_hosts(name: str, raw: str) -> tuple[str, ...]:
    """A comma-separated list of ``host:port`` (or ``host``) registry names."""
    hosts = tuple(h.strip() for h in raw.split(",") if h.strip())
    for host in hosts:
        if not re.fullmatch(r"[A-Za-z0-9.\-\[\]:]+", host):
            raise ConfigError(f"{name}: {host[:80]!r} is not a host or host:port")
    return hosts


Parser = Callable[[str, str], Any]

# field -> (environment variable or None, command-line flag or None, parser)
SETTINGS: dict[str, tuple[str | None, str | None, Parser]] = {
    "models_root": ("MODELS_ROOT", "--models-root", parse_path),
    "staging_dir": ("STAGING_DIR", "--staging-dir", parse_path),
    "current_link": ("CURRENT_LINK", "--current-link", parse_path),
    "manifest_name": ("MANIFEST_NAME", None, parse_file_name),
    "require_manifest": ("REQUIRE_MANIFEST", None, parse_bool),
    "poll_override": (None, "--poll-interval", parse_interval),
    "poll_default": ("POLL_DEFAULT", None, parse_interval),
    "reload_url": ("RELOAD_URL", "--reload-url", parse_url),
    "reload_method": (
        "RELOAD_METHOD",
        None,
        lambda n, r: parse_choice(n, r, RELOAD_METHODS, upper=True),
    ),
    "reload_timeout": ("RELOAD_TIMEOUT", None, lambda n, r: parse_number(n, r, 0.001, 3600)),
    "reload_retries": ("RELOAD_RETRIES", None, lambda n, r: parse_int(n, r, 0, 100)),
    "reload_token": ("RELOAD_TOKEN", None, parse_token_setting),
    "reload_token_file": ("RELOAD_TOKEN_FILE", None, parse_token_file),
    "reload_verify_url": ("RELOAD_VERIFY_URL", None, parse_url),
    "rollback_on_reload_failure": ("ROLLBACK_ON_RELOAD_FAILURE", None, parse_bool),
    "keep_versions": ("KEEP_VERSIONS", None, lambda n, r: parse_int(n, r, 1, 100_000)),
    "keep_rejected": ("KEEP_REJECTED", None, lambda n, r: parse_int(n, r, 0, 100_000)),
    "metrics_addr": ("METRICS_ADDR", "--metrics-addr", parse_address),
    "metrics_port": ("METRICS_PORT", "--metrics-port", lambda n, r: parse_int(n, r, 0, 65535)),
    "log_level": ("LOG_LEVEL", "--log-level", lambda n, r: parse_choice(n, r, LOG_LEVELS, True)),
    "log_format": (
        "LOG_FORMAT",
        "--log-format",
        lambda n, r: parse_choice(n, r, LOG_FORMATS, False),
    ),
    "watch": ("WATCH", "--watch", parse_bool),
    "trusted_keys_file": ("TRUSTED_KEYS_FILE", None, parse_path),
    "source": ("SOURCE", None, parse_source),
    "source_poll_seconds": ("SOURCE_POLL_SECONDS", None, lambda n, r: parse_number(n, r, 5, 86400)),
    "source_insecure": ("SOURCE_INSECURE", None, parse_hosts),
    "registry_auth_file": ("REGISTRY_AUTH_FILE", None, parse_path),
    "registry_ca_file": ("REGISTRY_CA_FILE", None, parse_path),
}
# Optional strings where an empty environment value means "unset" (as Kubernetes renders
# an optional ConfigMap key); RELOAD_URL="" means "reloading disabled" (SPEC section 6).
_EMPTY_MEANS_UNSET = {
    "RELOAD_TOKEN",
    "RELOAD_TOKEN_FILE",
    "RELOAD_VERIFY_URL",
    "TRUSTED_KEYS_FILE",
    "SOURCE",
    "SOURCE_INSECURE",
    "REGISTRY_AUTH_FILE",
    "REGISTRY_CA_FILE",
}


_UNSET = object()


def _setting(key: str, cli: Mapping[str, str | None], env: Mapping[str, str]) -> object:
    """The parsed value of one setting from its highest-ranked source, or ``_UNSET``."""
    var, flag, parser = SETTINGS[key]
    if flag is not None and cli.get(key) is not None:
        return parser(flag, str(cli[key]))
    if var is None or var not in env:
        return _UNSET
    raw = env[var]
    if raw == "" and var in _EMPTY_MEANS_UNSET:
        return _UNSET
    if raw == "" and var == "RELOAD_URL":
        return None
    return parser(var, raw)


def load_config(cli: Mapping[str, str | None], env: Mapping[str, str]) -> Config:
    """Build the configuration from parsed command-line values and the environment.

    ``cli`` maps field names to the raw text given on the command line (None when
    absent); ``cli["no_reload"]`` set to anything disables reloading.
    """
    values = {key: _setting(key, cli, env) for key in SETTINGS}
    chosen = {k: v for k, v in values.items() if v is not _UNSET}
    root = chosen.setdefault("models_root", Config.models_root)
    assert isinstance(root, Path)
    chosen.setdefault("staging_dir", root / "staging")
    chosen.setdefault("current_link", root / "current")
    if cli.get("no_reload"):
        chosen["reload_url"] = None
    if chosen.get("reload_token") is not None and chosen.get("reload_token_file") is not None:
        raise ConfigError("RELOAD_TOKEN and RELOAD_TOKEN_FILE: set one of them, not both")
    return Config(**chosen)  # type: ignore[arg-type]
