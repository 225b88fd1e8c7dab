"""The daemon: APScheduler runs the promotion pass on the resolved interval.

One interval job with ``max_instances=1`` and ``coalesce``; after every pass an event
listener reschedules the job when the resolved interval changed (SPEC section 5).
SIGTERM, SIGINT and SIGHUP stop the scheduler: a validation in progress is abandoned (its
claim undone, safe before the journal); a promotion past its journal finishes first,
which is quick. When idle,
every thread (scheduler, worker, metrics server, inotify watch) is blocked in the kernel
with no periodic wake-ups.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from types import FrameType
from typing import TYPE_CHECKING

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.base import SchedulerNotRunningError
from apscheduler.schedulers.blocking import BlockingScheduler

from service.errors import one_line
from service.health import Health
from service.jobs.promote import Promoter
from service.lockfile import DaemonLock
from service.metrics import Metrics
from service.progress import Progress
from service.signals import EarlyStop, install_signal_handlers
from service.watch import Watch

if TYPE_CHECKING:
    from service.jobs.pull import PullJob, PullResult

log = logging.getLogger(__name__)
JOB_ID = "promote"
PULL_JOB_ID = "pull"
PULL_STOP_GRACE = 1.5  # seconds a stop waits for a pull to reach its next chunk
STOP_GRACE = 3.0  # seconds a stop waits for a reload in flight (SPEC 9: exit within 5 s)


class Daemon:
    def __init__(
        self,
        promoter: Promoter,
        metrics: Metrics,
        health: Health,
        clock: Callable[[], float],
        progress: Progress | None = None,
        lock: DaemonLock | None = None,
    ) -> None:
        self.promoter = promoter
        self.progress = progress or promoter.progress
        self.lock = lock
        self._command_pending = False
        self.metrics = metrics
        self.health = health
        self.clock = clock
        self.interval = promoter.interval()
        self.watch: Watch | None = None
        self.pull: PullJob | None = None  # SOURCE set: the second job (SPEC 12)
        self.pull_seconds = 60.0
        self._pulling = threading.Lock()
        self._source_digest: str | None = None
        self._source_current: str | None = "\x00unknown"
        # One worker thread, blocked on its queue when idle. (APScheduler's DebugExecutor
        # would save it, but a shutdown during a pass in the scheduler's own thread makes
        # APScheduler 3 raise JobLookupError when it updates the removed job.)
        self.scheduler = BlockingScheduler(
            # The pull job has its own thread: a download never delays a promotion.
            executors={
                "default": ThreadPoolExecutor(max_workers=1),
                "pull": ThreadPoolExecutor(max_workers=1),
            },
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": None},
            timezone=UTC,
        )

    def poll(self) -> float:
        """The scheduled job: one pass; returns the interval resolved after it."""
        if self.progress.stopping.is_set():  # a run queued just before the stop
            return self.interval
        # After a command's event the command still holds the volume lock for a moment:
        # wait for it rather than skip the pass that delivers the command's reload.
        wait, self._command_pending = self._command_pending, False
        self.health.pass_started()
        try:
            result = self.promoter.run_pass(wait=wait)
        finally:
            self.health.pass_finished()
        if self.lock is not None and not self.lock.held:
            self.lock.acquire(self.lock.info)  # the other daemon may have gone
        self.health.ready = True
        if self.watch is not None:
            self.watch.rearm()
            if result.outcome in ("promoted", "rejected") and self.promoter.layout.ready.exists():
                self.wake()  # the next bundle arrived during this pass; its event was spent
        self._update_source_state()
        return self.promoter.interval()

    def pull_once(self) -> None:
        """The pull job's run; a bundle it staged wakes the promotion job."""
        assert self.pull is not None
        if self.progress.stopping.is_set():  # a run queued just before the stop
            return
        with self._pulling:
            result = self.pull.run()
        self._after_pull(result)

    def _after_pull(self, result: PullResult) -> None:
        if result.digest is not None:
            self._source_digest = result.digest
            self._source_current = "\x00unknown"  # the pull job set up_to_date itself
        if result.outcome == "staged":
            self.wake()

    def _update_source_state(self) -> None:
        """source_up_to_date follows a promotion or rollback at once, not at the next
        check (SPEC 12: 1 when current came from the digest the reference now names)."""
        if self.pull is None or self._source_digest is None:
            return
        current = self.promoter.current()
        if current == self._source_current:
            return
        from service.jobs.pull import digest_of_version

        try:
            came_from = digest_of_version(self.promoter.layout.state, current)
        except OSError as exc:
            log.error("cannot read the pulled digests: %s", one_line(exc))
            return
        self._source_current = current
        self.pull.metrics.source_up_to_date.set(1 if came_from == self._source_digest else 0)

    def _after_poll(self, event: JobExecutionEvent) -> None:
        if event.job_id != JOB_ID:
            if event.exception is not None:  # PullJob.run never raises; this is a bug
                log.error("pull job crashed: %s", one_line(event.exception))
            return
        if event.exception is not None:
            log.error("promotion pass crashed: %s", one_line(event.exception))
            return
        new = float(event.retval)
        if new != self.interval:
            log.info("poll interval changes from %g s to %g s", self.interval, new)
            self._set_interval(new)
            self.scheduler.reschedule_job(JOB_ID, trigger="interval", seconds=new)

    def _set_interval(self, seconds: float) -> None:
        self.interval = seconds
        self.health.interval = seconds
        self.metrics.poll_interval.set(seconds)

    def wake(self) -> None:
        """Run the job now (the watch calls this when READY appears)."""
        try:
            self.scheduler.modify_job(JOB_ID, next_run_time=datetime.now(UTC))
        except Exception as exc:
            log.debug("cannot wake the job: %s", one_line(exc))

    def wake_for_command(self) -> None:
        """A command changed the volume (a rollback): deliver its reload now. The
        daemon's own passes write the same files; those are not a reason to wake."""
        if not self.promoter.pass_lock.locked():
            self._command_pending = True
            self.wake()

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        self.progress.stop()
        if self.pull is not None:
            self.pull.stop()
        with contextlib.suppress(SchedulerNotRunningError):
            self.scheduler.shutdown(wait=False)

    def run(self, early: EarlyStop | None = None) -> None:
        """Run until a stop signal; ``early`` holds one received during start-up."""
        self._set_interval(self.interval)
        self.scheduler.add_job(
            self.poll, "interval", seconds=self.interval, id=JOB_ID, next_run_time=datetime.now(UTC)
        )
        if self.pull is not None:
            self._add_pull_job()
        self.scheduler.add_listener(self._after_poll, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
        previous = install_signal_handlers(self._stop)
        if early is not None:
            previous = early.previous
            if early.signum is not None:
                log.info("received %s during start-up: stopping", signal.Signals(early.signum).name)
                install_signal_handlers(previous)
                return
        self.health.running = True
        try:
            self.scheduler.start()
        finally:
            self.health.running = False
            finished = self._wait_for_pass() and self._wait_for_pull()
            install_signal_handlers(previous)
        log.info("stopped")
        if not finished:
            # Only a reload (or a pull) is in flight: its pending file stays and the next
            # start sends it again. The worker thread would hold the interpreter's exit until the
            # model server answers, so leave without waiting for it.
            logging.shutdown()
            os._exit(0)

    def _add_pull_job(self) -> None:
        seconds = self.pull_seconds
        # The jitter spreads the checks of a fleet that started together (a thundering
        # herd on the registry when a tag moves); the first check runs at start.
        self.scheduler.add_job(
            self.pull_once,
            "interval",
            seconds=seconds,
            id=PULL_JOB_ID,
            executor="pull",
            jitter=pull_jitter(seconds),
            next_run_time=datetime.now(UTC),
        )

    def _wait_for_pull(self) -> bool:
        """A stopped pull ends at its next chunk; one blocked on the network (up to its
        read timeout) is left behind: its partial files are resumed at the next start."""
        if self._pulling.acquire(timeout=PULL_STOP_GRACE):
            self._pulling.release()
            return True
        log.warning("stopping with a pull waiting on the registry; it resumes at the next start")
        return False

    def _wait_for_pass(self) -> bool:
        """Wait for the pass in progress: always while it changes the volume (a
        validation stops at once, a journalled change is quick); a reload in flight only
        for STOP_GRACE seconds. Whether the pass finished."""
        while not self.promoter.pass_lock.acquire(timeout=STOP_GRACE):
            if not self.promoter.changing.is_set():
                log.warning("stopping with a reload in flight; it is sent again at the next start")
                return False
        self.promoter.pass_lock.release()
        return True


def pull_jitter(seconds: float) -> float:
    """Up to a quarter of the interval, at most 5 minutes."""
    return min(seconds / 4, 300.0)
