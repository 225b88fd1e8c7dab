"""The poll interval: its bounds and the choice between the sources."""

from __future__ import annotations

import pytest

from service.interval import check_interval, check_manifest_interval, resolve_interval


@pytest.mark.parametrize(
    "value", [True, False, "30", 0, 0.5, 86401, float("inf"), float("nan"), [30], {"s": 1}]
)
def test_invalid_manifest_intervals_are_refused(value: object) -> None:
    """Only numbers in [1, 86400] are intervals; booleans are not numbers."""
    with pytest.raises(ValueError, match="poll_interval_seconds"):
        check_manifest_interval(value)


def test_interval_precedence() -> None:
    """CLI flag, then the manifest of current, then POLL_DEFAULT, then 30."""
    assert resolve_interval(5, 10, 20) == 5
    assert resolve_interval(None, 10, 20) == 10
    assert resolve_interval(None, None, 20) == 20


@pytest.mark.parametrize("value", [1, 1.5, 86400])
def test_valid_intervals_are_kept(value: float) -> None:
    """The bounds themselves are valid intervals."""
    assert check_interval(value) == value
