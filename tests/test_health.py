"""service.health: liveness means making progress, readiness is set once (fake clock)."""

from __future__ import annotations

import threading

from hypothesis import given
from hypothesis import strategies as st

from service.health import HEALTH_FLOOR_SECONDS, PROGRESS_WINDOW_SECONDS, Health, judge


class Clock:
    """A settable clock: the decisions are pure functions of times."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def running_health(clock: Clock, interval: float = 30.0) -> Health:
    health = Health(clock=clock, interval=interval)
    health.running = True
    return health


def test_healthy_while_polls_are_on_time() -> None:
    """Polls every interval keep /healthz at 200 for as long as they come."""
    clock = Clock()
    health = running_health(clock)
    for _ in range(100):
        health.pass_started()
        health.pass_finished()
        clock.now += 30
        assert health.healthy()


def test_not_healthy_when_the_scheduler_is_not_running() -> None:
    """A stopped scheduler is never healthy, even right after a poll."""
    clock = Clock()
    health = Health(clock=clock)
    health.pass_finished()
    assert not health.healthy()
    assert "not running" in health.verdict().why


def test_a_late_poll_without_progress_is_unhealthy() -> None:
    """No poll for longer than max(3 * interval, 60 s) and no progress: 503."""
    clock = Clock()
    health = running_health(clock, interval=30)
    health.pass_finished()
    clock.now += 90
    assert health.healthy()
    clock.now += 1
    verdict = health.verdict()
    assert not verdict.ok
    assert "no poll for 91 s (limit 90 s)" in verdict.why


def test_the_poll_limit_has_a_floor_of_60_seconds() -> None:
    """With a 1 s interval, a poll is late only after 60 s."""
    clock = Clock()
    health = running_health(clock, interval=1)
    health.pass_finished()
    clock.now += HEALTH_FLOOR_SECONDS
    assert health.healthy()
    clock.now += 0.5
    assert not health.healthy()


def test_the_first_poll_is_judged_from_the_start_on_the_injected_clock() -> None:
    """Before any poll the reference is the start time, read from the injected clock."""
    clock = Clock(now=5.0)
    health = running_health(clock, interval=10)
    assert health.started == 5.0
    clock.now = 5.0 + HEALTH_FLOOR_SECONDS
    assert health.healthy()
    clock.now += 1
    assert not health.healthy()


def test_a_long_hash_that_moves_bytes_stays_healthy() -> None:
    """A pass hashing for an hour, reporting progress every 10 s, never fails liveness."""
    clock = Clock()
    health = running_health(clock, interval=30)
    health.pass_finished()
    health.pass_started()
    for _ in range(360):
        clock.now += 10
        health.progress()
        assert health.healthy(), health.verdict().why
    assert health.verdict().why == "the pass in progress is moving bytes"


def test_a_pass_that_stops_moving_bytes_becomes_unhealthy() -> None:
    """Progress then silence: 503 once both the poll limit and the 60 s window passed."""
    clock = Clock()
    health = running_health(clock, interval=30)
    health.pass_finished()
    health.pass_started()
    clock.now += 200
    health.progress()
    clock.now += PROGRESS_WINDOW_SECONDS
    assert health.healthy()
    clock.now += 1
    verdict = health.verdict()
    assert not verdict.ok
    assert "last: 61 s ago" in verdict.why


def test_a_pass_stuck_at_its_start_becomes_unhealthy() -> None:
    """A pass that started and never moved a byte fails once the poll is late."""
    clock = Clock()
    health = running_health(clock, interval=30)
    health.pass_finished()
    clock.now += 30
    health.pass_started()
    clock.now += 61
    assert not health.healthy()


def test_readiness_starts_false_and_stays_once_set() -> None:
    """/readyz is 503 until recovery sets ready; later passes do not clear it."""
    health = running_health(Clock())
    assert not health.ready
    health.ready = True
    health.pass_started()
    health.pass_finished()
    assert health.ready


times = st.floats(min_value=0, max_value=1e9, allow_nan=False)
intervals = st.floats(min_value=0.1, max_value=1e6, allow_nan=False)


@given(
    now=times, last_poll=times, interval=intervals, ago=st.floats(0, PROGRESS_WINDOW_SECONDS - 1)
)
def test_recent_progress_is_always_alive(
    now: float, last_poll: float, interval: float, ago: float
) -> None:
    """Whatever the last poll and interval, progress within the window means alive."""
    verdict = judge(
        now, running=True, last_poll=last_poll, interval=interval, last_progress=now - ago
    )
    assert verdict.ok


@given(now=times, last_poll=times, interval=intervals, progress=st.none() | times)
def test_neither_poll_nor_progress_is_never_alive(
    now: float, last_poll: float, interval: float, progress: float | None
) -> None:
    """A late poll and no progress within 60 s is never alive; not running never is."""
    late = now - last_poll > max(3 * interval, HEALTH_FLOOR_SECONDS)
    stalled = progress is None or now - progress > PROGRESS_WINDOW_SECONDS
    verdict = judge(
        now, running=True, last_poll=last_poll, interval=interval, last_progress=progress
    )
    assert verdict.ok == (not (late and stalled))
    assert not judge(
        now, running=False, last_poll=last_poll, interval=interval, last_progress=progress
    ).ok


def test_progress_from_many_threads_while_judged() -> None:
    """progress() from copy/hash threads while the server judges: no error, stays alive."""
    health = running_health(Clock())
    errors: list[BaseException] = []

    def report() -> None:
        try:
            for _ in range(10_000):
                health.progress()
        except BaseException as exc:  # pragma: no cover - the assertion reports it
            errors.append(exc)

    threads = [threading.Thread(target=report) for _ in range(4)]
    for thread in threads:
        thread.start()
    for _ in range(1000):
        assert health.healthy()
    for thread in threads:
        thread.join()
    assert errors == []
