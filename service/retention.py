"""Which versions and rejected bundles to delete (SPEC section 7): pure decisions."""

from __future__ import annotations

from collections.abc import Iterable


def order_versions(existing: Iterable[str], promotion_order: list[str]) -> list[str]:
    """Existing versions oldest first: unknown to history (by name) before known ones."""
    known = [v for v in promotion_order if v in set(existing)]
    unknown = sorted(set(existing) - set(known))
    return unknown + known


def versions_to_delete(ordered: list[str], keep: int, protected: set[str | None]) -> list[str]:
    """The oldest versions beyond the newest ``keep``, never a protected one."""
    surplus = ordered[: max(len(ordered) - keep, 0)]
    return [v for v in surplus if v not in protected]


def rejected_to_delete(names: Iterable[str], keep: int) -> list[str]:
    """Rejected bundles beyond the newest ``keep`` (their generated names sort by time)."""
    ordered = sorted(names)
    return ordered[: max(len(ordered) - keep, 0)]
