"""Reload delivery (SPEC section 6): the pending reload, sending it, recording it.

A promotion or rollback leaves ``.sidecar/reload-pending.json``; delivery is at least
once: the file stays until the model server confirmed the reload (or a newer switch
replaced it), so it is retried on later polls and after a restart. The HTTP work is in
:class:`service.reload.Reloader`; this module counts, records history and decides
whether a failed reload rolls back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from service import fsops, history, jsonfile
from service.bundle import is_valid_version
from service.errors import StateDamaged
from service.layout import Layout
from service.metrics import Metrics
from service.reload import Reloader, ReloadRequest, ReloadResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PendingReload:
    version: str
    path: str
    previous: str | None
    rollback_allowed: bool


def parse_pending(raw: object) -> PendingReload:
    """A pending reload from its JSON value; StateDamaged when malformed."""
    if not isinstance(raw, dict):
        raise StateDamaged("reload-pending.json is not an object")
    version, path, previous = raw.get("version"), raw.get("path"), raw.get("previous")
    allowed = raw.get("rollback_allowed", False)
    if not is_valid_version(version) or not isinstance(path, str):
        raise StateDamaged("reload-pending.json has no valid version and path")
    if previous is not None and not is_valid_version(previous):
        raise StateDamaged("reload-pending.json has an invalid previous version")
    if not isinstance(allowed, bool):
        raise StateDamaged("reload-pending.json: rollback_allowed is not a boolean")
    assert isinstance(version, str)
    return PendingReload(version, path, previous, allowed)


class ReloadDelivery:
    def __init__(
        self,
        layout: Layout,
        reloader: Reloader,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        on_damage: Callable[[StateDamaged], None] | None = None,
        retried_later: bool = True,
        record_pending: bool | None = None,
    ) -> None:
        self.layout = layout
        self.reloader = reloader
        self.metrics = metrics
        self.clock = clock
        self.on_damage = on_damage
        self.retried_later = retried_later  # only the daemon retries; say so only there
        # A command leaves the reload to the daemon running on the volume: it records a
        # pending reload exactly when that daemon reloads, whatever its own settings say.
        self.record_pending = reloader.enabled if record_pending is None else record_pending
        self._failure_recorded: str | None = None

    @property
    def enabled(self) -> bool:
        return self.reloader.enabled

    def set_pending(self, name: str, previous: str | None, rollback_allowed: bool) -> None:
        """Record that the model server must (re)load name; replaces an older one."""
        self.pending()  # a damaged file is kept aside and counted before it is replaced
        if not self.record_pending:
            self.layout.pending_reload.unlink(missing_ok=True)
            return
        pending = PendingReload(
            name, str(self.layout.version_dir(name)), previous, rollback_allowed
        )
        fsops.atomic_write_json(self.layout.pending_reload, asdict(pending))

    def pending(self) -> PendingReload | None:
        """The pending reload; a damaged file is set aside (reported) and ignored."""
        try:
            return _read_pending(self.layout)
        except StateDamaged as exc:
            aside = jsonfile.set_aside(self.layout.pending_reload, self.clock())
            damage = StateDamaged(f"{exc.detail}; kept as {aside.name}")
            if self.on_damage is not None:
                self.on_damage(damage)
            return None

    def send_pending(self) -> ReloadResult | None:
        """Send the pending reload, if any; its result (None when there was nothing).

        The request is sent without the volume lock (a slow model server must not block
        a rollback); the outcome is recorded under it.
        """
        pending = self.pending()
        if pending is None:
            return None
        if not self.enabled:
            log.info("reloading is disabled: dropping the pending reload of %s", pending.version)
            self.layout.pending_reload.unlink(missing_ok=True)
            return None
        result = self.reloader.reload(
            ReloadRequest(pending.version, pending.path, pending.previous)
        )
        self._count(result)
        with fsops.volume_lock(self.layout.lock, wait=True):
            if result.error is None:
                self._succeeded(pending, result)
            else:
                self._failed(pending, result)
        return result

    def send_pending_or_roll_back(
        self, rollback_enabled: bool, rollback: Callable[[str, str], object]
    ) -> bool:
        """Send the pending reload; when it fails and rolling back is enabled and
        allowed, roll back to its previous version and send that reload. Whether the
        (first) reload failed."""
        pending = self.pending()
        result = self.send_pending()
        if result is None or result.error is None:
            return False
        if (
            rollback_enabled
            and pending is not None
            and pending.rollback_allowed
            and pending.previous is not None
        ):
            rollback(pending.previous, pending.version)
            self.send_pending()
        return True

    def _succeeded(self, pending: PendingReload, result: ReloadResult) -> None:
        if _read_pending_or_none(self.layout) == pending:
            self.layout.pending_reload.unlink()
        self._record(pending, result, "success")
        self._failure_recorded = None
        log.info("model server reloaded %s", pending.version)

    def _failed(self, pending: PendingReload, result: ReloadResult) -> None:
        assert result.error is not None
        log.warning(
            "reload of %s failed (%s): %s%s",
            pending.version,
            result.error.reason,
            result.error.detail,
            "; retrying on later polls" if self.retried_later else "",
        )
        if self._failure_recorded != pending.version:
            self._failure_recorded = pending.version
            self._record(pending, result, "failure", result.error.reason)

    def _record(
        self, pending: PendingReload, result: ReloadResult, outcome: str, reason: str | None = None
    ) -> None:
        event = history.make_event(
            "reload",
            pending.version,
            self.clock,
            outcome=outcome,
            reason=reason,
            duration_seconds=round(result.duration, 6),
        )
        history.append(self.layout.history, event)

    def _count(self, result: ReloadResult) -> None:
        self.metrics.reload_requests.labels("success").inc(result.attempts - result.failed_attempts)
        self.metrics.reload_requests.labels("failure").inc(result.failed_attempts)
        if result.error is not None:
            self.metrics.reload_failures.labels(result.error.reason).inc()
        self.metrics.reload_duration.observe(result.duration)


def _read_pending(layout: Layout) -> PendingReload | None:
    raw = jsonfile.load_json(layout.pending_reload)
    return None if raw is None else parse_pending(raw)


def _read_pending_or_none(layout: Layout) -> PendingReload | None:
    try:
        return _read_pending(layout)
    except StateDamaged:
        return None
