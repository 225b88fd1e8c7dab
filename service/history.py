"""``.sidecar/history.jsonl``: one JSON object per event, appended and fsynced."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

Event = dict[str, Any]
SWITCH_EVENTS = ("promoted", "rolled_back")


def rfc3339(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def make_event(event: str, version: str | None, clock: Callable[[], float],
               **fields: object) -> Event:
    record: Event = {"event": event, "time": rfc3339(clock()), "version": version}
    record.update({k: v for k, v in fields.items() if v is not None})
    return record


def append(path: Path, record: Event) -> None:
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def parse_lines(data: bytes) -> list[Event]:
    """Events from history bytes; a torn last line (crash mid-append) is skipped."""
    events = []
    for line in data.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            events.append(value)
    return events


def read(path: Path) -> list[Event]:
    try:
        return parse_lines(path.read_bytes())
    except FileNotFoundError:
        return []


TAIL_BYTES = 64 * 1024  # about 300 events


def read_tail(path: Path, max_bytes: int = TAIL_BYTES) -> list[Event]:
    """The events in the last max_bytes of the history: enough for retention and status,
    and a cost that does not grow with the age of the volume."""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(size - max_bytes, 0))
            data = fh.read()
    except FileNotFoundError:
        return []
    if size > max_bytes:
        data = data[data.find(b"\n") + 1:]  # the first line is cut
    return parse_lines(data)


def previous_version(path: Path, events: list[Event], current: str | None) -> str | None:
    """previous_of() over the tail events, reading the whole history only when the switch
    to current is older than the tail."""
    previous = previous_of(events, current)
    if previous is None and current is not None and not any(
            e.get("version") == current and e.get("event") in SWITCH_EVENTS for e in events):
        previous = previous_of(read(path), current)
    return previous


def read_from(path: Path, offset: int) -> tuple[list[Event], int]:
    """Complete events appended since offset, and the offset after the last of them."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return [], 0
    complete = data[: data.rfind(b"\n") + 1]
    return parse_lines(complete), offset + len(complete)


def previous_of(events: list[Event], current: str | None) -> str | None:
    """The version that was current before ``current`` was switched in."""
    for record in reversed(events):
        if record.get("event") in SWITCH_EVENTS and record.get("version") == current:
            previous = record.get("previous")
            return previous if isinstance(previous, str) else None
    return None


def promotion_order(events: list[Event]) -> list[str]:
    """Versions in the order they were last switched to, oldest first."""
    order: dict[str, None] = {}
    for record in events:
        version = record.get("version")
        if record.get("event") in SWITCH_EVENTS and isinstance(version, str):
            order.pop(version, None)
            order[version] = None
    return list(order)
