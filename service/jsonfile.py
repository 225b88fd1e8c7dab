"""Reading the sidecar's own small JSON files, bounded, and setting damaged ones aside.

One loader for every JSON state file: a size cap (a state file is a few hundred bytes;
a huge one is damage, not data), nesting errors and bad UTF-8 reported as
:class:`~service.errors.StateDamaged`, never as a traceback.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from service.errors import StateDamaged

log = logging.getLogger(__name__)
MAX_STATE_BYTES = 1024 * 1024


def parse_json(data: bytes, what: str) -> object:
    """The JSON value in data; StateDamaged naming ``what`` when it is not JSON."""
    try:
        value: object = json.loads(data)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise StateDamaged(f"{what} is not valid JSON: {detail}") from None
    return value


def load_json(path: Path, max_bytes: int = MAX_STATE_BYTES) -> object | None:
    """The JSON value in path, None when it does not exist, StateDamaged when damaged."""
    try:
        with path.open("rb") as fh:
            data = fh.read(max_bytes + 1)
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise StateDamaged(f"{path} is a directory, not a file") from None
    if len(data) > max_bytes:
        raise StateDamaged(f"{path} is larger than {max_bytes} bytes")
    value = parse_json(data, str(path))
    if value is None:  # None means "no file" to the callers: a file of null is damage
        raise StateDamaged(f"{path} holds null, not a state record")
    return value


def damaged_name(path: Path, now: float) -> Path:
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return path.with_name(f"{path.name}.damaged-{stamp}")


def set_aside(path: Path, now: float) -> Path:
    """Move a damaged state file out of the way, kept for inspection; its new path."""
    aside = damaged_name(path, now)
    os.rename(path, aside)
    return aside
