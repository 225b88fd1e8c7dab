"""The journal of a change in progress: ``.sidecar/intent.json``, typed.

Its presence means "roll forward": it is written (atomically, fsynced) once the claimed
bundle and every byte of it are durable, and removed when the change is complete. One
writer (:func:`write`) and one reader (:func:`read`) that validates every field, so the
recovery code only ever sees a well-formed :data:`Intent`; anything else is
:class:`~service.errors.StateDamaged`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from service import fsops, jsonfile
from service.bundle import is_valid_version
from service.errors import REJECTION_REASONS, StateDamaged

Trigger = Literal["manual", "reload_failure"]
TRIGGERS: tuple[Trigger, ...] = ("manual", "reload_failure")
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class Claim:
    """What a pass took from staging: READY's identity, the entries, whether copied."""

    ready: tuple[int, int] | None
    entries: tuple[str, ...]
    copied: bool
    claimed: float


@dataclass(frozen=True)
class Promote:
    name: str
    previous: str | None
    claim: Claim
    time: float
    digest: str | None = None  # the registry digest a pulled bundle came from
    action: Literal["promote"] = "promote"


@dataclass(frozen=True)
class Reject:
    name: str
    reason: str
    detail: str
    claim: Claim
    time: float
    digest: str | None = None
    action: Literal["reject"] = "reject"


@dataclass(frozen=True)
class Adopt:
    name: str
    time: float
    action: Literal["adopt"] = "adopt"


@dataclass(frozen=True)
class Rollback:
    name: str
    previous: str | None
    trigger: Trigger
    time: float
    action: Literal["rollback"] = "rollback"


Intent = Promote | Reject | Adopt | Rollback


def to_json(intent: Intent) -> dict[str, object]:
    """The journal's on-disk form: one flat object (the format of earlier releases)."""
    record = asdict(intent)
    claim = record.pop("claim", None)
    if isinstance(claim, dict):
        record.update(claim)
    if record.get("digest", "") is None:
        del record["digest"]  # a bundle not pulled: the journal of earlier releases
    return record


def write(path: Path, intent: Intent) -> None:
    fsops.atomic_write_json(path, to_json(intent))


def read(path: Path) -> Intent | None:
    """The journalled intent, None when there is none; StateDamaged when malformed."""
    raw = jsonfile.load_json(path)
    if raw is None:
        return None
    try:
        return _parse(raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise StateDamaged(f"{path} is not a journal entry: {exc}") from None


def _field(raw: dict[str, object], key: str, kind: type) -> object:
    value = raw[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise TypeError(f"{key} is not a {kind.__name__}")
    return value


def _name(raw: dict[str, object], key: str, optional: bool = False) -> str | None:
    value = raw.get(key)
    if value is None and optional:
        return None
    if not is_valid_version(value):
        raise ValueError(f"{key} is not a version name")
    assert isinstance(value, str)
    return value


def _digest(raw: dict[str, object]) -> str | None:
    value = raw.get("digest")
    if value is None:
        return None
    if not isinstance(value, str) or not DIGEST_RE.match(value):
        raise ValueError("digest is not sha256:<64 lowercase hex>")
    return value


def _claim(raw: dict[str, object]) -> Claim:
    ready = raw.get("ready")
    if ready is not None:
        if not (
            isinstance(ready, list)
            and len(ready) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in ready)
        ):
            raise TypeError("claim.ready is not [inode, mtime_ns]")
        ready = (ready[0], ready[1])
    entries = _field(raw, "entries", list)
    assert isinstance(entries, list)
    if not all(isinstance(e, str) and e and "/" not in e for e in entries):
        raise TypeError("claim.entries are not file names")
    copied, claimed = _field(raw, "copied", bool), _field(raw, "claimed", float)
    assert isinstance(copied, bool) and isinstance(claimed, float)
    return Claim(ready, tuple(entries), copied, claimed)


def _parse(raw: object) -> Intent:
    if not isinstance(raw, dict):
        raise TypeError("not an object")
    action, when = raw.get("action"), _field(raw, "time", float)
    assert isinstance(when, float)
    name = _name(raw, "name")
    assert name is not None
    if action == "promote":
        return Promote(name, _name(raw, "previous", True), _claim(raw), when, _digest(raw))
    if action == "reject":
        reason, detail = raw.get("reason"), _field(raw, "detail", str)
        if reason not in REJECTION_REASONS:
            raise ValueError("reason is not a rejection reason")
        assert isinstance(reason, str) and isinstance(detail, str)
        return Reject(name, reason, detail, _claim(raw), when, _digest(raw))
    if action == "adopt":
        return Adopt(name, when)
    if action == "rollback":
        trigger = raw.get("trigger")
        if trigger not in TRIGGERS:
            raise ValueError("trigger is not manual or reload_failure")
        return Rollback(name, _name(raw, "previous", True), trigger, when)
    raise ValueError(f"unknown action {str(action)[:40]!r}")
