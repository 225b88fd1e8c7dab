"""The daemon's start-up log line: what it watches, how often, what it reloads, where it
serves metrics, in one sentence; the effective configuration goes with it as fields."""

from __future__ import annotations

from service.config import Config
from service.interval import resolve_interval
from service.status import printable


def _seconds(value: float) -> str:
    return f"{value:g} s"


def _reloading(config: Config, redacted: dict[str, object]) -> str:
    if config.reload_url is None:
        return "reloading disabled"
    return f"reloading {config.reload_method} {printable(str(redacted['reload_url']))}"


def _metrics(config: Config) -> str:
    if not config.metrics_port:
        return "metrics disabled"
    return f"metrics on {printable(config.metrics_addr)}:{config.metrics_port}"


def _following(config: Config) -> list[str]:
    if config.source is None:
        return []
    signed = ", signatures required" if config.trusted_keys_file is not None else ""
    return [
        f"following {printable(config.source)} every {_seconds(config.source_poll_seconds)}{signed}"
    ]


def start_message(
    config: Config, current: str | None, interval: float | None = None
) -> tuple[str, dict[str, object]]:
    """The human line and the redacted effective configuration.

    ``interval`` is the resolved poll interval when the caller knows it (the manifest of
    current may set it); else it is resolved from the flag and POLL_DEFAULT.
    """
    redacted = config.redacted()
    if interval is None:
        interval = resolve_interval(config.poll_override, None, config.poll_default)
    staging = printable(str(config.staging_dir))
    watching = (
        f"watching {staging}, polling every {_seconds(interval)}"
        if config.watch
        else f"polling {staging} every {_seconds(interval)}"
    )
    parts = [
        watching,
        *_following(config),
        f"current {printable(current)}" if current is not None else "no current version",
        _reloading(config, redacted),
        _metrics(config),
    ]
    return ", ".join(parts), redacted
