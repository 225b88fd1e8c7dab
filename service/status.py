"""``forecaster-sidecar status``: what is on the volume, read without the lock."""

from __future__ import annotations

from typing import Any

from service import fsops, history, volume
from service.layout import Layout

LAST_EVENTS = 10


def _rejection(layout: Layout, name: str) -> dict[str, Any]:
    record = fsops.read_json(layout.rejected / name / "REJECTION.json")
    info = record if isinstance(record, dict) else {}
    return {"name": name, "reason": info.get("reason"), "detail": info.get("detail"),
            "time": info.get("time")}


def collect(layout: Layout) -> dict[str, Any]:
    events = history.read_tail(layout.history)
    current = volume.current_name(layout)
    staged = layout.ready.exists()
    return {
        "current": current,
        "current_link": volume.link_state(layout).kind,
        "previous": history.previous_version(layout.history, events, current),
        "versions": list(reversed(volume.list_dirs(layout.versions))),
        "staged": {"ready": staged,
                   "entries": len(volume.staged_entries(layout)) if staged else 0},
        "rejected": [_rejection(layout, n) for n in volume.list_dirs(layout.rejected)],
        "pending_reload": fsops.read_json(layout.pending_reload),
        "interrupted": layout.intent.exists() or layout.incoming.exists(),
        "last_events": events[-LAST_EVENTS:],
    }


def _staged(staged: dict[str, Any]) -> str:
    return f"READY, {staged['entries']} entries" if staged["ready"] else "nothing"


def render_text(status: dict[str, Any]) -> str:
    lines = [
        f"current:   {status['current'] or '(none)'} [{status['current_link']}]",
        f"previous:  {status['previous'] or '(none)'}",
        f"versions:  {', '.join(status['versions']) or '(none)'}",
        f"staged:    {_staged(status['staged'])}",
    ]
    pending = status["pending_reload"]
    lines.append(f"reload:    {'pending for ' + pending['version'] if pending else 'up to date'}")
    for rejected in status["rejected"]:
        lines.append(f"rejected:  {rejected['name']}: {rejected['reason']}: {rejected['detail']}")
    lines.append("last events:")
    for event in status["last_events"]:
        extra = " ".join(f"{k}={event[k]}" for k in ("previous", "outcome", "reason", "trigger")
                         if k in event)
        lines.append(f"  {event.get('time')} {event.get('event')} {event.get('version')} {extra}")
    return "\n".join(lines)
