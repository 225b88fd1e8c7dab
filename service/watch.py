"""Watch mode: an inotify watch on STAGING_DIR wakes the job when READY appears.

inotify through ctypes costs one blocked thread and no dependency; polling stays the
fallback and the safety net (NFS delivers no remote events, a watch can be lost when
staging is deleted and re-created).
"""

from __future__ import annotations

import ctypes
import logging
import os
import struct
import threading
from collections.abc import Callable
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


def ready_in(buffer: bytes) -> tuple[bool, bool]:
    """Parse inotify events: (READY appeared, the watch was lost)."""
    ready = lost = False
    offset = 0
    while offset + _EVENT.size <= len(buffer):
        _wd, mask, _cookie, length = _EVENT.unpack_from(buffer, offset)
        name = buffer[offset + _EVENT.size: offset + _EVENT.size + length].rstrip(b"\0")
        offset += _EVENT.size + length
        ready |= name == b"READY" and bool(mask & (IN_CREATE | IN_MOVED_TO))
        lost |= bool(mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF))
    return ready, lost


class Watch:
    def __init__(self, directory: Path, on_ready: Callable[[], None]) -> None:
        self.directory = directory
        self.on_ready = on_ready
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self.watching = False
        self.rearm()
        self._thread = threading.Thread(target=self._loop, name="watch", daemon=True)
        self._thread.start()

    def rearm(self) -> None:
        """(Re)add the watch; after staging was deleted and re-created, for example."""
        if self.watching or not self.directory.is_dir():
            return
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(self.directory), WATCH_MASK)
        if wd < 0:
            err = ctypes.get_errno()
            log.warning("cannot watch %s (%s): polling only", self.directory, os.strerror(err))
            return
        self.watching = True

    def _loop(self) -> None:
        while True:
            try:
                buffer = os.read(self.fd, 65536)
            except OSError:
                return
            ready, lost = ready_in(buffer)
            if lost:
                self.watching = False
            if ready:
                self.on_ready()

    def close(self) -> None:
        os.close(self.fd)


def start_watch(directory: Path, on_ready: Callable[[], None]) -> Watch | None:
    """A running watch, or None (logged) where inotify is not available."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        return Watch(directory, on_ready)
    except (OSError, AttributeError) as exc:
        log.warning("watch mode unavailable (%s): polling only", exc)
        return None
