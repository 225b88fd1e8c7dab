"""Names of versions and rejected bundles (SPEC section 2): pure decisions."""

from __future__ import annotations

from collections.abc import Container
from datetime import UTC, datetime


def timestamp_name(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")


def generated_name(now: float, taken: Container[str]) -> str:
    """A UTC timestamp name, with -2, -3, ... appended while the name is taken."""
    base = timestamp_name(now)
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    return name
