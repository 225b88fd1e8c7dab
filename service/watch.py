"""Watch mode: inotify wakes the job when READY appears or a command changed the volume.

Two watches: STAGING_DIR for READY (a producer finished), and ``.sidecar/`` for a
journal or pending reload renamed into place (a ``rollback`` command ran, so the daemon
delivers its reload now rather than at the next poll). inotify through ctypes costs one
blocked thread and no dependency; polling stays the fallback and the safety net (NFS
delivers no remote events, a watch is lost when staging is deleted and re-created).
"""

from __future__ import annotations

import ctypes
import logging
import os
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

IN_CREATE = 0x00000100
IN_MOVED_TO = 0x00000080
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_IGNORED = 0x00008000
IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")
WATCH_MASK = IN_CREATE | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF
STATE_NAMES = frozenset({b"intent.json", b"reload-pending.json"})


@dataclass(frozen=True)
class Events:
    """What a buffer of inotify events says."""

    ready: bool = False  # READY appeared in staging
    state: bool = False  # a journal or pending reload was renamed into .sidecar/
    lost: frozenset[int] = frozenset()  # watch descriptors that are gone


def parse_events(buffer: bytes, staging_wd: int, state_wd: int) -> Events:
    """Parse a read(2) of an inotify descriptor (pure)."""
    ready = state = False
    lost: set[int] = set()
    offset = 0
    while offset + _EVENT.size <= len(buffer):
        wd, mask, _cookie, length = _EVENT.unpack_from(buffer, offset)
        name = buffer[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0")
        offset += _EVENT.size + length
        created = bool(mask & (IN_CREATE | IN_MOVED_TO))
        ready |= wd == staging_wd and created and name == b"READY"
        state |= wd == state_wd and bool(mask & IN_MOVED_TO) and name in STATE_NAMES
        if mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF):
            lost.add(wd)
    return Events(ready, state, frozenset(lost))


class Watch:
    def __init__(
        self, staging: Path, state: Path, on_ready: Callable[[], None], on_state: Callable[[], None]
    ) -> None:
        self.staging, self.state = staging, state
        self.on_ready, self.on_state = on_ready, on_state
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self.staging_wd = self.state_wd = -1
        self.rearm()
        self._thread = threading.Thread(target=self._loop, name="watch", daemon=True)
        self._thread.start()

    @property
    def watching(self) -> bool:
        return self.staging_wd >= 0

    def _add(self, directory: Path) -> int:
        if not directory.is_dir():
            return -1
        wd: int = self._libc.inotify_add_watch(self.fd, os.fsencode(directory), WATCH_MASK)
        if wd < 0:
            err = ctypes.get_errno()
            log.warning("cannot watch %s (%s): polling only", directory, os.strerror(err))
        return wd

    def rearm(self) -> None:
        """(Re)add lost watches; after staging was deleted and re-created, for example."""
        if self.staging_wd < 0:
            self.staging_wd = self._add(self.staging)
        if self.state_wd < 0:
            self.state_wd = self._add(self.state)

    def _loop(self) -> None:
        while True:
            try:
                buffer = os.read(self.fd, 65536)
            except OSError:
                return
            events = parse_events(buffer, self.staging_wd, self.state_wd)
            if self.staging_wd in events.lost:
                self.staging_wd = -1
            if self.state_wd in events.lost:
                self.state_wd = -1
            if events.ready:
                self.on_ready()
            if events.state:
                self.on_state()

    def close(self) -> None:
        os.close(self.fd)


def start_watch(
    staging: Path, state: Path, on_ready: Callable[[], None], on_state: Callable[[], None]
) -> Watch | None:
    """A running watch, or None (logged) where inotify is not available."""
    try:
        staging.mkdir(parents=True, exist_ok=True)
        return Watch(staging, state, on_ready, on_state)
    except (OSError, AttributeError) as exc:
        log.warning("watch mode unavailable (%s): polling only", exc)
        return None
