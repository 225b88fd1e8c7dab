"""Cancellation and progress of the long parts of a pass (hashing, copying).

The scheduler owns a :class:`Progress`; the validation loops call :meth:`Progress.step`
after every chunk. It raises :class:`~service.errors.Cancelled` once a stop was asked
(SIGTERM abandons a validation: the claim is undone, which is safe before the journal)
and reports progress to the liveness check, so that a long hash is not mistaken for a
wedge.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from service.errors import Cancelled


def _nothing() -> None:
    """No liveness to feed (the CLI and unit tests)."""


class Progress:
    def __init__(self, on_progress: Callable[[], None] = _nothing) -> None:
        self.stopping = threading.Event()
        self.on_progress = on_progress

    def step(self) -> None:
        """Called after each chunk of work: stop here when asked, else report progress."""
        if self.stopping.is_set():
            raise Cancelled("stopping: the work in progress was abandoned")
        self.on_progress()

    def stop(self) -> None:
        self.stopping.set()
