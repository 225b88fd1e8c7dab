"""The poll interval (SPEC section 5): its bounds, checked in one place, and the choice."""

from __future__ import annotations

import math

MIN_INTERVAL = 1.0
MAX_INTERVAL = 86400.0
DEFAULT_INTERVAL = 30.0


def check_interval(value: object) -> float:
    """value as a valid interval in seconds; ValueError saying why it is not one.

    Booleans are not numbers here, although Python says they are.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number of seconds, got {str(value)[:40]!r}")
    if not math.isfinite(value) or not MIN_INTERVAL <= value <= MAX_INTERVAL:
        raise ValueError(
            f"must be between {MIN_INTERVAL:g} and {MAX_INTERVAL:g} seconds, got {value!r}"
        )
    return float(value)


def check_manifest_interval(value: object) -> float | None:
    """The manifest's interval when it is valid; None when absent; ValueError when invalid."""
    if value is None:
        return None
    try:
        return check_interval(value)
    except ValueError as exc:
        raise ValueError(f"poll_interval_seconds {exc}") from None


def resolve_interval(override: float | None, manifest: float | None, default: float) -> float:
    """CLI flag, then the manifest of current, then POLL_DEFAULT (30 unless set)."""
    if override is not None:
        return override
    return manifest if manifest is not None else default
