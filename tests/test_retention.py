"""Which versions and rejected bundles to delete: pure decisions."""

from __future__ import annotations

from service import retention


def test_versions_unknown_to_history_are_oldest() -> None:
    """Versions without a history record sort before known ones, by name."""
    assert retention.order_versions(["z", "a", "v2", "v1"], ["v1", "v2"]) == ["a", "z", "v1", "v2"]


def test_versions_to_delete_spares_protected() -> None:
    """Surplus versions are deleted oldest first, never a protected one."""
    ordered = ["v1", "v2", "v3", "v4", "v5"]
    assert retention.versions_to_delete(ordered, 2, {"v5", "v2"}) == ["v1", "v3"]
    assert retention.versions_to_delete(ordered, 10, set()) == []


def test_rejected_beyond_keep_are_the_oldest_names() -> None:
    """Rejected bundles (timestamp names) beyond KEEP_REJECTED go oldest first."""
    names = ["20270101T000000Z", "20270103T000000Z", "20270102T000000Z"]
    assert retention.rejected_to_delete(names, 1) == ["20270101T000000Z", "20270102T000000Z"]
    assert retention.rejected_to_delete(names, 5) == []
