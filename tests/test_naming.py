"""Generated version names: pure decisions."""

from __future__ import annotations

from service.bundle import is_valid_version
from service.naming import generated_name


def test_generated_names_take_suffixes_on_collision() -> None:
    """Timestamp names get -2, -3 while taken."""
    taken = {"20270115T080000Z", "20270115T080000Z-2"}
    assert generated_name(1_800_000_000.0, taken) == "20270115T080000Z-3"


def test_generated_names_are_valid_version_names() -> None:
    """A generated name obeys the version name rule, so it can be rolled back to."""
    assert is_valid_version(generated_name(1_800_000_000.0, {"20270115T080000Z"}))
