"""history.jsonl and the pure decisions built on it (retention, naming, interval)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service import history, retention
from service.interval import check_manifest_interval, resolve_interval
from service.naming import generated_name


def write(path: Path, events: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))


def test_torn_last_line_is_skipped(tmp_path: Path) -> None:
    """A crash mid-append leaves a partial line; reading skips it."""
    path = tmp_path / "h.jsonl"
    path.write_text('{"event": "promoted", "version": "v1"}\n{"event": "prom')
    assert history.read(path) == [{"event": "promoted", "version": "v1"}]


def test_read_tail_drops_the_cut_first_line(tmp_path: Path) -> None:
    """read_tail returns only whole events from the end of the file."""
    path = tmp_path / "h.jsonl"
    write(path, [{"event": "promoted", "version": f"v{n}"} for n in range(100)])
    tail = history.read_tail(path, max_bytes=200)
    assert tail and tail[-1]["version"] == "v99"
    assert all(set(e) == {"event", "version"} for e in tail)


def test_previous_version_falls_back_to_the_whole_history(tmp_path: Path) -> None:
    """When current's switch is older than the tail, the whole file is read."""
    path = tmp_path / "h.jsonl"
    events = [{"event": "promoted", "version": "v1"},
              {"event": "promoted", "version": "v2", "previous": "v1"}]
    events += [{"event": "rejected", "version": f"r{n}", "reason": "empty_bundle"}
               for n in range(200)]
    write(path, events)
    tail = history.read_tail(path, max_bytes=500)
    assert history.previous_of(tail, "v2") is None
    assert history.previous_version(path, tail, "v2") == "v1"


def test_promotion_order_counts_rollbacks_as_recent() -> None:
    """A version switched to by a rollback moves to the newest end."""
    events = [{"event": "promoted", "version": "a"}, {"event": "promoted", "version": "b"},
              {"event": "rolled_back", "version": "a", "previous": "b"}]
    assert history.promotion_order(events) == ["b", "a"]


def test_versions_unknown_to_history_are_oldest() -> None:
    """Versions without a history record sort before known ones, by name."""
    assert retention.order_versions(["z", "a", "v2", "v1"], ["v1", "v2"]) == [
        "a", "z", "v1", "v2"]


def test_versions_to_delete_spares_protected() -> None:
    """Surplus versions are deleted oldest first, never a protected one."""
    ordered = ["v1", "v2", "v3", "v4", "v5"]
    assert retention.versions_to_delete(ordered, 2, {"v5", "v2"}) == ["v1", "v3"]
    assert retention.versions_to_delete(ordered, 10, set()) == []


def test_generated_names_take_suffixes_on_collision() -> None:
    """Timestamp names get -2, -3 while taken."""
    taken = {"20270115T080000Z", "20270115T080000Z-2"}
    assert generated_name(1_800_000_000.0, taken) == "20270115T080000Z-3"


@pytest.mark.parametrize("value", [True, False, "30", 0, 0.5, 86401, float("inf"),
                                   float("nan"), [30], {"s": 1}])
def test_invalid_manifest_intervals_are_refused(value: object) -> None:
    """Only numbers in [1, 86400] are intervals; booleans are not numbers."""
    with pytest.raises(ValueError, match="poll_interval_seconds"):
        check_manifest_interval(value)


def test_interval_precedence() -> None:
    """CLI flag, then the manifest of current, then POLL_DEFAULT, then 30."""
    assert resolve_interval(5, 10, 20) == 5
    assert resolve_interval(None, 10, 20) == 10
    assert resolve_interval(None, None, 20) == 20
