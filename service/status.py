"""``forecaster-sidecar status``: what is on the volume, read without the lock.

:func:`collect` reads the volume into a plain dict (the ``--json`` output, schema
:data:`SCHEMA`, documented in docs/status-schema.md); :func:`render_text` turns that dict
into lines for a human. Nothing here changes the volume, and a damaged state file is
reported, never raised.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service import history, jsonfile, volume
from service.errors import ConfigError, SidecarError
from service.layout import Layout
from service.lockfile import DaemonInfo

SCHEMA = "forecaster-sidecar/status/v1"
LAST_EVENTS = 10


# -- names made safe to print ----------------------------------------------------------------


def printable(text: str) -> str:
    """text with every character a terminal would act on escaped: control characters
    (newlines, ESC of ANSI sequences), format characters, bytes that were not UTF-8
    (``os`` decodes them to lone surrogates), and the backslash itself."""
    out = []
    for char in text:
        code = ord(char)
        if char == "\\":
            out.append("\\\\")
        elif 0xDC80 <= code <= 0xDCFF:  # surrogateescape: an undecodable byte
            out.append(f"\\x{code - 0xDC00:02x}")
        elif char.isprintable():
            out.append(char)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


def json_text(text: str) -> str:
    """A file name for JSON: valid Unicode, undecodable bytes written as ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _clean(value: object) -> object:
    """A value read from a state file, with every string made valid Unicode."""
    if isinstance(value, str):
        return json_text(value)
    if isinstance(value, dict):
        return {json_text(str(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


# -- reading the volume ------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    path: Path
    error: str


def _read_json(path: Path, problems: list[Problem]) -> object | None:
    try:
        return jsonfile.load_json(path)
    except (OSError, SidecarError) as exc:
        problems.append(Problem(path, _error_text(exc)))
        return None


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return printable(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def tree_size(path: Path) -> tuple[int, int]:
    """Regular files under path and their total size in bytes (links not followed)."""
    files = size = 0
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                files, size = files + 1, size + st.st_size
    return files, size


def _parse_time(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _last_switch_times(events: list[history.Event]) -> dict[str, float | None]:
    times: dict[str, float | None] = {}
    for event in events:
        version = event.get("version")
        if event.get("event") in history.SWITCH_EVENTS and isinstance(version, str):
            times.pop(version, None)
            times[version] = _parse_time(event.get("time"))
    return times


def _versions(
    layout: Layout, events: list[history.Event], current: str | None, now: float
) -> list[dict[str, Any]]:
    """Versions on disk in promotion order, oldest first; those history does not know
    (adopted, or older than its tail) come first, by name."""
    on_disk = volume.list_dirs(layout.versions)
    switched = _last_switch_times(events)
    order = [n for n in on_disk if n not in switched] + [n for n in switched if n in on_disk]
    out = []
    for name in order:
        files, size = tree_size(layout.version_dir(name))
        out.append(
            {
                "name": json_text(name),
                "current": name == current,
                **_when("promoted", switched.get(name), now),
                "files": files,
                "size_bytes": size,
            }
        )
    return out


def _when(key: str, timestamp: float | None, now: float) -> dict[str, Any]:
    if timestamp is None:
        return {key: None, "age_seconds": None}
    return {key: history.rfc3339(timestamp), "age_seconds": round(max(now - timestamp, 0), 3)}


def _daemon(daemon: DaemonInfo | None) -> dict[str, Any]:
    if daemon is None:
        return {
            "running": False,
            "pid": None,
            "host": None,
            "started": None,
            "reload": {"configured": None, "url": None, "method": None},
        }
    return {
        "running": True,
        "pid": daemon.pid,
        "host": json_text(str(daemon.host)),
        "started": daemon.started,
        "reload": {
            "configured": daemon.reload is not None,
            "url": daemon.reload,
            "method": daemon.reload_method if daemon.reload is not None else None,
        },
    }


def _staging(layout: Layout, problems: list[Problem]) -> dict[str, Any]:
    try:
        entries = volume.staged_entries(layout)
    except FileNotFoundError:
        return {"state": "missing", "entries": 0, "files": 0, "size_bytes": 0, "version": None}
    except OSError as exc:
        problems.append(Problem(layout.staging, _error_text(exc)))
        return {"state": "unreadable", "entries": 0, "files": 0, "size_bytes": 0, "version": None}
    ready = os.path.lexists(layout.ready)
    files, size = tree_size(layout.staging)
    manifest = _read_json(layout.staging / layout.manifest_name, problems) if ready else None
    version = manifest.get("version") if isinstance(manifest, dict) else None
    state = "ready" if ready else "writing" if entries else "empty"
    return {
        "state": state,
        "entries": len(entries),
        "files": files - int(ready),
        "size_bytes": size,
        "version": json_text(version) if isinstance(version, str) else None,
    }


def _pending(
    layout: Layout, events: list[history.Event], now: float, problems: list[Problem]
) -> dict[str, Any] | None:
    pending = _read_json(layout.pending_reload, problems)
    if pending is None:
        return None
    version = pending.get("version") if isinstance(pending, dict) else None
    if not isinstance(version, str):
        problems.append(Problem(layout.pending_reload, "not a pending reload"))
        return None
    try:
        since: float | None = layout.pending_reload.stat().st_mtime
    except OSError:
        since = None
    failure = next(
        (e for e in reversed(events) if e.get("event") == "reload" and e.get("version") == version),
        None,
    )
    failed = failure if failure is not None and failure.get("outcome") == "failure" else None
    return {
        "version": json_text(version),
        **_when("since", since, now),
        "last_failure": None
        if failed is None
        else {"time": _clean(failed.get("time")), "reason": _clean(failed.get("reason"))},
    }


def _rejected(layout: Layout, problems: list[Problem]) -> list[dict[str, Any]]:
    out = []
    for name in volume.list_dirs(layout.rejected):
        record = _read_json(layout.rejected / name / "REJECTION.json", problems)
        info = record if isinstance(record, dict) else {}
        out.append(
            {
                "name": json_text(name),
                "reason": _clean(info.get("reason")),
                "detail": _clean(info.get("detail")),
                "time": _clean(info.get("time")),
            }
        )
    return sorted(out, key=lambda r: (str(r["time"] or ""), r["name"]))


def _events(layout: Layout, problems: list[Problem]) -> list[history.Event]:
    try:
        read = history.read_tail_events(layout.history)
    except (OSError, SidecarError) as exc:
        problems.append(Problem(layout.history, _error_text(exc)))
        return []
    if read.damaged:
        problems.append(Problem(layout.history, f"{read.damaged} damaged lines skipped"))
    return read.events


def _previous(layout: Layout, events: list[history.Event], current: str | None) -> str | None:
    """The previous version; the whole history is read only when the tail does not know."""
    try:
        return history.previous_version(layout.history, events, current)
    except (OSError, SidecarError):
        return history.previous_of(events, current)


def check_root(layout: Layout) -> None:
    """status never creates the volume: a missing root is a configuration error."""
    root = layout.root
    if not root.exists():
        raise ConfigError(
            f"MODELS_ROOT {root} does not exist (only the daemon creates it; "
            f"is --models-root right?)"
        )
    if not root.is_dir():
        raise ConfigError(f"MODELS_ROOT {root} is not a directory")


def collect(layout: Layout, now: float, daemon: DaemonInfo | None) -> dict[str, Any]:
    """The state of the volume as the ``--json`` schema describes it."""
    check_root(layout)
    problems: list[Problem] = []
    events = _events(layout, problems)
    link = volume.link_state(layout)
    current = link.name
    state: dict[str, Any] = {
        "schema": SCHEMA,
        "time": history.rfc3339(now),
        "root": json_text(str(layout.root)),
        "staging_dir": json_text(str(layout.staging)),
        "current_link": json_text(str(layout.current)),
        "current": {"version": None if current is None else json_text(current), "link": link.kind},
        "previous": _clean(_previous(layout, events, current)),
        "versions": _versions(layout, events, current, now),
        "daemon": _daemon(daemon),
        "pending_reload": _pending(layout, events, now, problems),
        "staging": _staging(layout, problems),
        "rejected": _rejected(layout, problems),
        "interrupted": layout.intent.exists() or layout.incoming.exists(),
        "last_events": [_clean(e) for e in events[-LAST_EVENTS:]],
    }
    state["problems"] = [{"path": json_text(str(p.path)), "error": p.error} for p in problems]
    return state


# -- text for a human ---------------------------------------------------------------------------


def size_text(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def age_text(seconds: float) -> str:
    seconds = int(seconds)
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            rest = seconds % length
            smaller = {"d": (3600, "h"), "h": (60, "min"), "min": (1, "s")}[unit]
            tail = f" {rest // smaller[0]} {smaller[1]}" if rest // smaller[0] else ""
            return f"{seconds // length} {unit}{tail} ago"
    return f"{seconds} s ago"


def time_text(value: object, now: float) -> str:
    """An RFC 3339 time as ``YYYY-MM-DD HH:MM:SS UTC (age)``; anything else escaped."""
    timestamp = _parse_time(value)
    if timestamp is None:
        return "unknown time" if value is None else f"time {printable(str(value))}"
    when = datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{when} ({age_text(max(now - timestamp, 0))})"


def _p(value: object) -> str:
    return printable(value if isinstance(value, str) else json.dumps(value))


def _version_lines(state: dict[str, Any], now: float) -> list[str]:
    rows = state["versions"]
    if not rows:
        return ["versions:  none"]
    width = max(len(printable(r["name"])) for r in rows)
    lines = ["versions:  oldest promotion first (* current)"]
    for row in rows:
        mark = "*" if row["current"] else " "
        promoted = time_text(row["promoted"], now) if row["promoted"] else "not in history"
        lines.append(
            f"  {mark} {printable(row['name']):<{width}}  {promoted}, "
            f"{size_text(row['size_bytes'])} in {count(row['files'], 'file')}"
        )
    return lines


def _current_line(state: dict[str, Any]) -> str:
    current = state["current"]
    if current["version"] is not None:
        previous = state["previous"]
        tail = f" (previous {_p(previous)})" if previous is not None else ""
        return f"current:   {printable(current['version'])}{tail}"
    what = {
        "absent": "none: nothing promoted yet",
        "directory": "a plain directory (adopted at the next pass)",
        "broken": "BROKEN: the link does not point at a version",
    }
    return f"current:   {what.get(current['link'], current['link'])}"


def _daemon_lines(state: dict[str, Any], now: float) -> list[str]:
    daemon = state["daemon"]
    if not daemon["running"]:
        return [
            "daemon:    none running (nobody holds .sidecar/daemon.lock)",
            "reloading: unknown: no daemon running",
        ]
    reload = daemon["reload"]
    url = (
        f"{_p(reload['method'] or 'POST')} {_p(reload['url'])}"
        if reload["configured"]
        else "disabled"
    )
    return [
        f"daemon:    pid {daemon['pid']} on {printable(daemon['host'])}, holds the lock, "
        f"started {time_text(daemon['started'], now)}",
        f"reloading: {url}",
    ]


def _pending_line(state: dict[str, Any], now: float) -> str:
    pending = state["pending_reload"]
    if pending is None:
        return "reload:    nothing pending"
    line = f"reload:    pending for {printable(pending['version'])}"
    if pending["since"] is not None:
        line += f" since {time_text(pending['since'], now)}"
    failure = pending["last_failure"]
    if failure is not None:
        when = time_text(failure["time"], now)
        line += f"; last attempt failed ({_p(failure['reason'])}) at {when}"
    return line


def _staging_line(state: dict[str, Any]) -> str:
    staging = state["staging"]
    where = printable(state["staging_dir"])
    size = f"{count(staging['files'], 'file')}, {size_text(staging['size_bytes'])}"
    if staging["state"] == "ready":
        version = staging["version"]
        named = f"version {printable(version)}" if version else "version named at promotion"
        return f"staging:   {where}: READY bundle waiting ({size}, {named})"
    if staging["state"] == "writing":
        return (
            f"staging:   {where}: {staging['entries']} entries without READY "
            f"({size}): a producer is writing"
        )
    return f"staging:   {where}: {staging['state']}"


def _rejected_lines(state: dict[str, Any], now: float) -> list[str]:
    return [
        f"rejected:  {printable(r['name'])} {time_text(r['time'], now)}: "
        f"{_p(r['reason'])}: {_p(r['detail'])}"
        for r in state["rejected"]
    ]


def _event_line(event: dict[str, Any], now: float) -> str:
    extra = " ".join(
        f"{k}={_p(event[k])}"
        for k in ("previous", "outcome", "reason", "trigger")
        if k in event and event[k] is not None
    )
    return (
        f"  {time_text(event.get('time'), now)} {_p(event.get('event'))} "
        f"{_p(event.get('version'))} {extra}"
    )


def render_text(state: dict[str, Any], now: float) -> str:
    lines = [f"root:      {printable(state['root'])}", _current_line(state)]
    lines += _version_lines(state, now)
    lines += _daemon_lines(state, now)
    lines += [_pending_line(state, now), _staging_line(state)]
    lines += _rejected_lines(state, now)
    if state["interrupted"]:
        lines.append("interrupted: a pass was interrupted; the next pass recovers it")
    lines += [f"damaged:   {printable(p['path'])}: {p['error']}" for p in state["problems"]]
    lines.append("last events:" if state["last_events"] else "last events: none")
    lines += [_event_line(e, now) for e in state["last_events"]]
    return "\n".join(line.rstrip() for line in lines)
