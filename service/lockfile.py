"""Who runs on the volume: the daemon's lifetime lock, ``.sidecar/daemon.lock``.

The daemon holds an exclusive flock on it for as long as it runs and writes who it is
(pid, host, start time, its reload endpoint) into it. Commands read it to learn whether
a daemon runs and how it reloads (``status``; ``rollback`` leaves the reload to that
daemon), and a second daemon on the same volume warns, naming the first. It is separate
from ``.sidecar/lock``, which guards each change and is held only for a pass.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

from service.errors import StateDamaged
from service.jsonfile import parse_json
from service.layout import Layout


@dataclass(frozen=True)
class DaemonInfo:
    pid: int
    host: str
    started: str
    reload: str | None
    reload_method: str

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, running since {self.started}"


class DaemonLock:
    """The daemon's claim on the volume, kept open for the daemon's lifetime."""

    def __init__(self, path: Path, info: DaemonInfo) -> None:
        self.path = path
        self.info = info
        self.fd: int | None = None

    def acquire(self, info: DaemonInfo) -> DaemonInfo | None:
        """Take the lock and record info; the other daemon's info when it is held."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return read_daemon_at(self.path) or info
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(asdict(info)) + "\n").encode(), 0)
        self.fd = fd
        return None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def this_process(reload: str | None, reload_method: str, started: str) -> DaemonInfo:
    return DaemonInfo(os.getpid(), socket.gethostname(), started, reload, reload_method)


def _parse(data: bytes) -> DaemonInfo | None:
    try:
        raw = parse_json(data, "daemon.lock")
    except StateDamaged:
        return None
    if not isinstance(raw, dict):
        return None
    try:
        return DaemonInfo(
            int(raw["pid"]),
            str(raw["host"]),
            str(raw["started"]),
            None if raw.get("reload") is None else str(raw["reload"]),
            str(raw.get("reload_method", "POST")),
        )
    except (KeyError, TypeError, ValueError):
        return None


def read_daemon_at(path: Path) -> DaemonInfo | None:
    """The daemon holding the lock at path, or None when none does."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None  # nobody holds it: no daemon runs
        except BlockingIOError:
            pass
        info = _parse(os.pread(fd, 4096, 0))
        return info or DaemonInfo(0, "unknown", "unknown", None, "POST")
    finally:
        os.close(fd)


def read_daemon(layout: Layout) -> DaemonInfo | None:
    """The daemon running on the volume of layout, or None when none runs."""
    return read_daemon_at(layout.daemon_lock)
