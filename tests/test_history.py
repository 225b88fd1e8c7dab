"""history.jsonl: appending, tolerant reading, damage and repair, what it tells."""

from __future__ import annotations

import json
from pathlib import Path

from service import history


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
    events = [
        {"event": "promoted", "version": "v1"},
        {"event": "promoted", "version": "v2", "previous": "v1"},
    ]
    events += [
        {"event": "rejected", "version": f"r{n}", "reason": "empty_bundle"} for n in range(200)
    ]
    write(path, events)
    tail = history.read_tail(path, max_bytes=500)
    assert history.previous_of(tail, "v2") is None
    assert history.previous_version(path, tail, "v2") == "v1"


def test_promotion_order_counts_rollbacks_as_recent() -> None:
    """A version switched to by a rollback moves to the newest end."""
    events = [
        {"event": "promoted", "version": "a"},
        {"event": "promoted", "version": "b"},
        {"event": "rolled_back", "version": "a", "previous": "b"},
    ]
    assert history.promotion_order(events) == ["b", "a"]


def test_damaged_middle_lines_are_counted_and_skipped(tmp_path: Path) -> None:
    """Complete lines that are not events (garbage, deep nesting, wrong types) are damage."""
    path = tmp_path / "h.jsonl"
    path.write_text(
        '{"event": "promoted", "version": "v1"}\n'
        + "[" * 50_000
        + "\n"
        + '{"event": "promoted", "version": 7}\nnot json\n'
        + '{"event": "promoted", "version": "v2"}\n'
    )
    events = history.read_tail_events(path)
    assert [e["version"] for e in events.events] == ["v1", "v2"]
    assert events.damaged == 3


def test_torn_last_line_is_not_damage(tmp_path: Path) -> None:
    """A partial last line (a crash mid-append) is skipped without being called damage."""
    path = tmp_path / "h.jsonl"
    path.write_text('{"event": "promoted", "version": "v1"}\n{"event": "pro')
    assert history.read_tail_events(path).damaged == 0


def test_repair_keeps_the_original_and_the_good_lines(tmp_path: Path) -> None:
    """repair() sets the damaged file aside and rewrites history with its good lines."""
    path = tmp_path / "h.jsonl"
    original = '{"event": "promoted", "version": "v1"}\ngarbage\n'
    original += '{"event": "rolled_back", "version": "v1", "previous": null}\n'
    path.write_text(original)
    aside = history.repair(path, 1_800_000_000.0)
    assert aside.read_text() == original
    assert [e["event"] for e in history.read(path)] == ["promoted", "rolled_back"]
    assert history.read_tail_events(path).damaged == 0


def test_oversized_line_is_skipped_whole(tmp_path: Path) -> None:
    """A line longer than the line cap is skipped, even when it ends like an event."""
    path = tmp_path / "h.jsonl"
    tail = b'{"event": "promoted", "version": "fake"}\n'
    path.write_bytes(
        b'{"event": "promoted", "version": "v1"}\n'
        + b"x" * (history.MAX_LINE_BYTES * 2 + 7)
        + tail
        + b'{"event": "promoted", "version": "v2"}\n'
    )
    assert [e["version"] for e in history.read(path)] == ["v1", "v2"]
