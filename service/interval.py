"""The poll interval (SPEC section 5): pure decisions."""

from __future__ import annotations

import math

from service.config import DEFAULT_INTERVAL, MAX_INTERVAL, MIN_INTERVAL


def check_manifest_interval(value: object) -> float | None:
    """The manifest's interval when it is valid; None when absent; ValueError when invalid."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"poll_interval_seconds must be a number, got {value!r}")
    if not math.isfinite(value) or not MIN_INTERVAL <= value <= MAX_INTERVAL:
        raise ValueError(
            f"poll_interval_seconds must be between {MIN_INTERVAL:g} and {MAX_INTERVAL:g}, "
            f"got {value!r}"
        )
    return float(value)


def resolve_interval(override: float | None, manifest: float | None,
                     default: float | None) -> float:
    """CLI flag, then the manifest of current, then POLL_DEFAULT, then 30 seconds."""
    for value in (override, manifest, default):
        if value is not None:
            return value
    return DEFAULT_INTERVAL
