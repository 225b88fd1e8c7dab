"""Journalled changes to the volume: promote, reject, adopt, roll back.

:meth:`JournalledChanges.apply` writes the journal (``.sidecar/intent.json``), then
carries the change out; :meth:`JournalledChanges.finish` carries out a journalled change
and is safe to repeat: recovery calls it for a journal a crash left behind. Every step
checks what is already done (the bundle already published, READY already gone, the
history record already written), so a crash between any two steps is finished forward.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from service import fsops, history, journal, volume
from service.delivery import ReloadDelivery
from service.errors import TransientError, doing
from service.journal import Adopt, Claim, Intent, Promote, Reject, Rollback
from service.layout import Layout
from service.metrics import Metrics

log = logging.getLogger(__name__)
# The value of the ``outcome`` label of model_sidecar_promotions_total for a pass outcome.
OUTCOME_LABELS = {"promoted": "success", "rejected": "rejected", "io_error": "error"}


class JournalledChanges:
    def __init__(
        self, layout: Layout, metrics: Metrics, delivery: ReloadDelivery, clock: Callable[[], float]
    ) -> None:
        self.layout = layout
        self.metrics = metrics
        self.delivery = delivery
        self.clock = clock
        self.retention_due = True  # set by every change that may leave a surplus

    def apply(self, intent: Intent) -> None:
        """Journal a change, then carry it out."""
        with doing(f"writing the journal {self.layout.intent}"):
            journal.write(self.layout.intent, intent)
        self.finish(intent)

    def finish(self, intent: Intent) -> None:
        """Carry a journalled change through to its end; safe to repeat after a crash."""
        with doing(f"finishing the {intent.action} of {intent.name}"):
            self._finish(intent)

    def _finish(self, intent: Intent) -> None:
        if isinstance(intent, Promote):
            self._finish_promote(intent)
        elif isinstance(intent, Reject):
            self._finish_reject(intent)
        elif isinstance(intent, Adopt):
            self._finish_adopt(intent)
        else:
            self._finish_rollback(intent)
        self.layout.intent.unlink()
        fsops.fsync_dir(self.layout.state)

    def _release(self, claim: Claim) -> None:
        mark = volume.ReadyMark(*claim.ready) if claim.ready else None
        copied = list(claim.entries) if claim.copied else []
        with doing(f"emptying {self.layout.staging}"):
            volume.release_staging(self.layout, copied, mark)

    def _switch(self, name: str) -> None:
        target = self.layout.version_dir(name)
        if not target.is_dir() or target.is_symlink():
            raise TransientError(f"refusing to point {self.layout.current} at missing {target}")
        with doing(f"switching {self.layout.current} to {name}"):
            fsops.switch_link(self.layout.current, target)
        self.retention_due = True

    def _finish_promote(self, intent: Promote) -> None:
        name = intent.name
        if self.layout.incoming.exists():
            with doing(f"publishing {self.layout.version_dir(name)}"):
                volume.publish_dir(self.layout.incoming, self.layout.version_dir(name), False)
        self._release(intent.claim)
        self._switch(name)
        self.delivery.set_pending(name, intent.previous, rollback_allowed=True)
        duration = max(self.clock() - intent.claim.claimed, 0.0)
        self._record_once(
            history.make_event(
                "promoted",
                name,
                self.clock,
                duration_seconds=round(duration, 6),
                previous=intent.previous,
                digest=intent.digest,
            )
        )
        self._remember(intent.digest, "promoted", name)
        self.metrics.promotions.labels(OUTCOME_LABELS["promoted"]).inc()
        self.metrics.promotion_duration.observe(duration)
        self.metrics.last_success.set(self.clock())
        log.info(
            "promoted %s in %.3f s (previous: %s)", name, duration, intent.previous or "nothing"
        )

    def _finish_reject(self, intent: Reject) -> None:
        if self.layout.incoming.exists():
            volume.write_rejection(
                self.layout.incoming,
                {
                    "reason": intent.reason,
                    "detail": intent.detail,
                    "time": history.rfc3339(intent.time),
                },
            )
            volume.publish_dir(self.layout.incoming, self.layout.rejected / intent.name, False)
        self._release(intent.claim)
        self._record_once(
            history.make_event(
                "rejected",
                intent.name,
                self.clock,
                reason=intent.reason,
                detail=intent.detail,
                digest=intent.digest,
            )
        )
        self._remember(intent.digest, "rejected", None)
        self.metrics.promotions.labels(OUTCOME_LABELS["rejected"]).inc()
        self.metrics.promotion_failures.labels(intent.reason).inc()
        self.retention_due = True
        log.warning(
            "rejected the staged bundle as rejected/%s: %s: %s",
            intent.name,
            intent.reason,
            intent.detail,
        )

    def _finish_adopt(self, intent: Adopt) -> None:
        if volume.link_state(self.layout).kind == "directory":
            volume.publish_dir(self.layout.current, self.layout.version_dir(intent.name), True)
        self._switch(intent.name)
        self._record_once(history.make_event("promoted", intent.name, self.clock, reason="adopted"))
        log.info("adopted the former directory %s as version %s", self.layout.current, intent.name)

    def _finish_rollback(self, intent: Rollback) -> None:
        self._switch(intent.name)
        self.delivery.set_pending(intent.name, intent.previous, rollback_allowed=False)
        self._record_once(
            history.make_event(
                "rolled_back",
                intent.name,
                self.clock,
                previous=intent.previous,
                trigger=intent.trigger,
            )
        )
        log.warning(
            "rolled back to %s (from %s, trigger %s)",
            intent.name,
            intent.previous or "nothing",
            intent.trigger,
        )

    def _remember(self, digest: str | None, outcome: str, version: str | None) -> None:
        """A pulled bundle's verdict, so that its digest is never pulled again."""
        if digest is None:
            return
        from service.jobs.pull import record_outcome  # only for bundles the pull job staged

        with doing(f"recording the {outcome} digest {digest}"):
            record_outcome(self.layout.state, digest, outcome, version, self.clock)

    def _record_once(self, record: history.Event) -> None:
        """Append to history unless a crash-interrupted pass already did."""
        events = history.read_tail(self.layout.history)
        if events and _same_event(events[-1], record):
            return
        with doing(f"appending to {self.layout.history}"):
            history.append(self.layout.history, record)


def _same_event(a: history.Event, b: history.Event) -> bool:
    keys = ("event", "version", "previous", "reason", "trigger")
    return all(a.get(k) == b.get(k) for k in keys)
