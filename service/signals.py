"""The stop signals (SIGTERM, SIGINT, SIGHUP), from the first instant of a daemon.

Python's default for SIGTERM and SIGHUP kills the process at once. :class:`EarlyStop` is
installed first thing when the daemon command starts, notes a signal that arrives while
it starts up, and :meth:`service.scheduler.Daemon.run` honours it, so a stop at any
instant after that ends with exit 0 and a log line.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class EarlyStop:
    """Stop signals received before the daemon runs (start-up takes a moment): noted,
    then honoured by :meth:`Daemon.run`, so a stop at any instant exits 0 cleanly."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous = install_signal_handlers(self._note)

    def _note(self, signum: int, _frame: FrameType | None) -> None:
        self.signum = signum

    def restore(self) -> None:
        install_signal_handlers(self.previous)


def install_signal_handlers(handler: Any) -> dict[int, Any]:
    """Install handler (or a mapping signal -> handler); the previous handlers."""
    return {
        sig: signal.signal(sig, handler[sig] if isinstance(handler, dict) else handler)
        for sig in STOP_SIGNALS
    }
