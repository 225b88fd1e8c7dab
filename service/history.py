"""``.sidecar/history.jsonl``: one JSON object per event, appended and fsynced.

Reading is tolerant: a torn last line (a crash mid-append) is skipped silently; a
complete line that is not a well-formed event is damage, counted by the reader so that
the promotion job can set the file aside and keep the good lines (:func:`repair`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, TypedDict, cast

from service import fsops, jsonfile
from service.errors import StateDamaged

EventKind = Literal["promoted", "rejected", "rolled_back", "reload", "pulled"]
EVENT_KINDS: tuple[str, ...] = ("promoted", "rejected", "rolled_back", "reload", "pulled")
SWITCH_EVENTS = ("promoted", "rolled_back")
TAIL_BYTES = 64 * 1024  # about 300 events: enough for retention, rollback and status
MAX_LINE_BYTES = 64 * 1024


class Event(TypedDict, total=False):
    event: EventKind
    time: str
    version: str | None
    previous: str | None
    outcome: Literal["success", "failure"]
    duration_seconds: float
    reason: str
    detail: str
    trigger: str
    digest: str
    reference: str
    bytes: int


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "time": (str,),
    "version": (str, type(None)),
    "previous": (str, type(None)),
    "outcome": (str,),
    "duration_seconds": (int, float),
    "reason": (str,),
    "detail": (str,),
    "trigger": (str,),
    "digest": (str,),
    "reference": (str,),
    "bytes": (int,),
}


def rfc3339(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def make_event(
    event: EventKind, version: str | None, clock: Callable[[], float], **fields: object
) -> Event:
    record: dict[str, object] = {"event": event, "time": rfc3339(clock()), "version": version}
    record.update({k: v for k, v in fields.items() if v is not None})
    return cast(Event, record)


def append(path: Path, record: Event) -> None:
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def parse_event(line: bytes) -> Event | None:
    """The event on one line, or None when the line is not a well-formed event."""
    if len(line) > MAX_LINE_BYTES:
        return None
    try:
        value = jsonfile.parse_json(line, "history line")
    except StateDamaged:
        return None
    if not isinstance(value, dict) or value.get("event") not in EVENT_KINDS:
        return None
    for key, kinds in _FIELD_TYPES.items():
        if key in value and (not isinstance(value[key], kinds) or isinstance(value[key], bool)):
            return None
    return cast(Event, value)


@dataclass
class Events:
    """Events read from history, and how many complete lines were damaged."""

    events: list[Event] = field(default_factory=list)
    damaged: int = 0


def parse_lines(data: bytes) -> Events:
    """Events from history bytes; a last line without its newline (torn) is skipped."""
    out = Events()
    lines = data.split(b"\n")
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        event = parse_event(line)
        if event is not None:
            out.events.append(event)
        elif index < len(lines) - 1:
            out.damaged += 1
    return out


def read(path: Path) -> list[Event]:
    """Every well-formed event, read line by line (a long history is never one buffer)."""
    try:
        return [
            e
            for line in _lines(path)
            if line.endswith(b"\n") and (e := parse_event(line.rstrip(b"\n"))) is not None
        ]
    except FileNotFoundError:
        return []


def read_tail_events(path: Path, max_bytes: int = TAIL_BYTES) -> Events:
    """The events in the last max_bytes of the history: enough for retention and status,
    and a cost that does not grow with the age of the volume."""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(size - max_bytes, 0))
            data = fh.read()
    except FileNotFoundError:
        return Events()
    if size > max_bytes:
        data = data[data.find(b"\n") + 1 :]  # the first line is cut
    return parse_lines(data)


def read_tail(path: Path, max_bytes: int = TAIL_BYTES) -> list[Event]:
    return read_tail_events(path, max_bytes).events


def _lines(path: Path) -> Iterator[bytes]:
    """The lines of path, each with its newline; a line longer than MAX_LINE_BYTES is
    skipped whole, read in pieces, so it never costs more memory than that."""
    with path.open("rb") as fh:
        oversized = False
        while piece := fh.readline(MAX_LINE_BYTES + 1):
            complete = piece.endswith(b"\n")
            if not oversized and (complete or len(piece) <= MAX_LINE_BYTES):
                yield piece
            oversized = not complete


def repair(path: Path, now: float) -> Path:
    """Set a damaged history aside and rewrite it with its well-formed lines only.

    Streams the file, so a long history costs no memory. Returns the path kept aside.
    """
    aside = jsonfile.damaged_name(path, now)
    os.link(path, aside)  # kept for inspection; the rewrite below replaces path
    tmp = path.with_name(f".{path.name}.repair")
    with tmp.open("wb") as out:
        for line in _lines(aside):
            if line.endswith(b"\n") and parse_event(line.rstrip(b"\n")) is not None:
                out.write(line)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    fsops.fsync_dir(path.parent)
    return aside


def previous_version(path: Path, events: list[Event], current: str | None) -> str | None:
    """previous_of() over the tail events, reading the whole history only when the switch
    to current is older than the tail."""
    previous = previous_of(events, current)
    if (
        previous is None
        and current is not None
        and not any(e.get("version") == current and e.get("event") in SWITCH_EVENTS for e in events)
    ):
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
    return parse_lines(complete).events, offset + len(complete)


def previous_of(events: list[Event], current: str | None) -> str | None:
    """The version that was current before ``current`` was switched in."""
    for record in reversed(events):
        if record.get("event") in SWITCH_EVENTS and record.get("version") == current:
            return record.get("previous")
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
