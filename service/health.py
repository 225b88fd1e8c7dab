"""Liveness and readiness (SPEC section 10): what /healthz and /readyz report.

Liveness means "making progress": the scheduler is alive and either its polls happen on
time, or the pass in progress has moved or hashed bytes recently. A 50 GiB bundle takes
minutes to hash; judging only the last poll would make Kubernetes kill the pod mid-hash,
again and again. The scheduler and the promotion code write; the HTTP server reads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

HEALTH_FLOOR_SECONDS = 60.0  # a poll is late after max(3 * interval, this)
PROGRESS_WINDOW_SECONDS = 60.0  # a pass is stuck after this long without moving bytes


class Verdict(NamedTuple):
    ok: bool
    why: str


def judge(
    now: float, *, running: bool, last_poll: float, interval: float, last_progress: float | None
) -> Verdict:
    """Alive while polls are on time or the pass in progress moved bytes recently."""
    if not running:
        return Verdict(False, "the scheduler is not running")
    since_poll = now - last_poll
    poll_limit = max(3 * interval, HEALTH_FLOOR_SECONDS)
    if since_poll <= poll_limit:
        return Verdict(True, "polls are on time")
    if last_progress is not None and now - last_progress <= PROGRESS_WINDOW_SECONDS:
        return Verdict(True, "the pass in progress is moving bytes")
    stalled = "none" if last_progress is None else f"{now - last_progress:.0f} s ago"
    return Verdict(
        False,
        f"no poll for {since_poll:.0f} s (limit {poll_limit:.0f} s) "
        f"and no progress within {PROGRESS_WINDOW_SECONDS:.0f} s "
        f"(last: {stalled})",
    )


@dataclass
class Health:
    """Written by the scheduler and the promotion pass, read by the HTTP server.

    Every write is one attribute store (atomic under the GIL), so no lock is needed and
    ``progress()`` costs one clock call: cheap enough for every chunk of a copy or hash.
    ``ready`` is set once start-up recovery has finished and is never cleared: later
    promotion failures are counted, not turned into an unready pod.
    """

    clock: Callable[[], float] = time.time
    started: float | None = None
    running: bool = False
    ready: bool = False
    interval: float = 30.0
    last_poll: float | None = None
    last_progress: float | None = None

    def __post_init__(self) -> None:
        if self.started is None:
            self.started = self.clock()

    def pass_started(self) -> None:
        """A pass began: the scheduler fired, which is progress in itself."""
        self.last_progress = self.clock()

    def progress(self) -> None:
        """The pass in progress moved or hashed bytes; call it per chunk, not per byte."""
        self.last_progress = self.clock()

    def pass_finished(self) -> None:
        """A pass ended (whatever its outcome): the poll happened."""
        self.last_poll = self.clock()

    def verdict(self) -> Verdict:
        last_poll = self.last_poll
        reference = last_poll if last_poll is not None else self.started
        assert reference is not None  # set by __post_init__
        return judge(
            self.clock(),
            running=self.running,
            last_poll=reference,
            interval=self.interval,
            last_progress=self.last_progress,
        )

    def healthy(self) -> bool:
        return self.verdict().ok
