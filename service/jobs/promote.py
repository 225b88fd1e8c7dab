"""One pass of the sidecar: recover, take a staged bundle, switch, retain, reload.

The order of the steps is the crash-safety argument (SPEC section 4):

1. claim: the staged entries are renamed into ``.sidecar/work/incoming`` (copied
   across filesystems); READY stays, so a crash here is undone by putting them back;
2. the claimed bundle is validated and a name decided;
3. one syncfs(2) makes the claim and every file durable; then the decision is
   journalled in ``.sidecar/intent.json``; from here on a crash is finished forward by
   the next pass, never undone;
4. the bundle is renamed to ``versions/<name>`` (or ``rejected/<name>``), both
   directories fsynced;
5. staging is emptied, READY last and only the READY that was claimed;
6. ``current`` is switched (temporary symlink, rename, fsync of the directory);
7. the pending reload and the history record are written, the journal removed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from service import fsops, history, retention, volume
from service.bundle import Manifest, check_contents, check_tree, manifest_poll_interval
from service.config import Config
from service.errors import BundleRejected, LockBusy, RollbackError, TransientError
from service.interval import check_manifest_interval, resolve_interval
from service.layout import Layout
from service.metrics import Metrics
from service.naming import generated_name
from service.reload import Reloader, ReloadRequest, ReloadResult

log = logging.getLogger(__name__)
Intent = dict[str, Any]
_UNKNOWN = "\x00unknown"


@dataclass(frozen=True)
class PassResult:
    """What a pass did: ``idle``, ``promoted``, ``rejected``, ``io_error`` or ``busy``."""

    outcome: str
    version: str | None = None
    reload_failed: bool = False

    @property
    def failed(self) -> bool:
        return self.outcome in ("rejected", "io_error") or self.reload_failed


class Promoter:
    def __init__(self, config: Config, metrics: Metrics, reloader: Reloader,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.layout = Layout.from_config(config)
        self.metrics = metrics
        self.reloader = reloader
        self.clock = clock
        self.pass_lock = threading.Lock()
        self._current: str | None = _UNKNOWN
        self._manifest_interval: float | None = None
        self._history_offset: int | None = None
        self._retention_due = True
        self._reload_failure_recorded: str | None = None

    # -- the pass ----------------------------------------------------------------------

    def run_pass(self, wait: bool = False) -> PassResult:
        """Run one pass; errors are counted and logged, never raised."""
        with self.pass_lock:
            self.metrics.polls.inc()
            result = self._guarded_pass(wait)
            if result.outcome != "busy" and self._deliver_reload():
                result = PassResult(result.outcome, result.version, reload_failed=True)
            self._observe()
            return result

    def _guarded_pass(self, wait: bool) -> PassResult:
        try:
            volume.ensure_dirs(self.layout)
            with fsops.volume_lock(self.layout.lock, wait):
                return self._locked_pass()
        except LockBusy as exc:
            log.info("skipping this pass: %s", exc.detail)
            return PassResult("busy")
        except (OSError, TransientError) as exc:
            self._count_failure("error", "io_error")
            log.error("promotion pass failed, will retry: %s", _describe(exc))
            return PassResult("io_error")

    def _locked_pass(self) -> PassResult:
        self._recover()
        self._count_external_events()
        result = self._take_staged() if self.layout.ready.exists() else PassResult("idle")
        if self._retention_due:
            self._retention_due = False
            self._retain()
        return result

    # -- recovery ----------------------------------------------------------------------

    def _recover(self) -> None:
        for name in volume.remove_temp_links(self.layout):
            log.warning("removed %s left by an interrupted switch", name)
        intent = fsops.read_json(self.layout.intent)
        if isinstance(intent, dict):
            log.warning("finishing an interrupted %s of %s", intent.get("action"),
                        intent.get("name"))
            self._finish(intent)
        if self.layout.incoming.exists():
            log.warning("returning an interrupted claim to %s", self.layout.staging)
            volume.unclaim(self.layout)
        fsops.empty_dir(self.layout.trash)
        volume.remove_stray_copies(self.layout)
        state = volume.link_state(self.layout)
        if state.kind == "directory":
            self._adopt()
        elif state.kind == "broken":
            self._repair_link()

    def _adopt(self) -> None:
        name = generated_name(self.clock(), set(volume.list_dirs(self.layout.versions)))
        log.warning("adopting the directory %s as version %s", self.layout.current, name)
        self._journal({"action": "adopt", "name": name, "previous": None})

    def _repair_link(self) -> None:
        link = self.layout.current
        if not link.is_symlink():
            raise TransientError(f"{link} is neither a symlink nor a directory; move it away")
        existing = set(volume.list_dirs(self.layout.versions))
        order = [v for v in history.promotion_order(history.read_tail(self.layout.history))
                 if v in existing] or sorted(existing)
        if not order:
            log.error("%s is broken and no version exists: removing it", link)
            link.unlink()
            fsops.fsync_dir(link.parent)
            return
        log.error("%s is broken: pointing it back at %s", link, order[-1])
        fsops.switch_link(link, self.layout.version_dir(order[-1]))

    def _count_external_events(self) -> None:
        """Count rollbacks that a CLI command recorded in the shared history."""
        if self._history_offset is None:
            self._history_offset = _size(self.layout.history)
            return
        events, self._history_offset = history.read_from(self.layout.history,
                                                         self._history_offset)
        for event in events:
            if event.get("event") == "rolled_back" and event.get("trigger") == "manual":
                self.metrics.rollbacks.labels("manual").inc()
                self._retention_due = True

    # -- taking a staged bundle --------------------------------------------------------

    def _take_staged(self) -> PassResult:
        ready = volume.ReadyMark.of(self.layout.ready)
        entries = volume.staged_entries(self.layout)
        base: Intent = {"ready": ready and [ready.inode, ready.mtime_ns], "entries": entries,
                        "previous": volume.current_name(self.layout), "claimed": self.clock()}
        try:
            base["copied"], skipped = volume.claim(self.layout, entries)
            intent = {**base, **self._decide(skipped)}
            # One syncfs makes the claim's renames and every byte of the bundle durable
            # before the journal says "roll forward" (instead of a fsync per file).
            fsops.sync_tree(self.layout.incoming, also=(self.layout.work, self.layout.staging))
        except OSError as exc:
            self._abandon_claim()
            self._count_failure("error", "io_error")
            log.error("cannot take the staged bundle, will retry: %s", _describe(exc))
            return PassResult("io_error")
        self._journal(intent)
        outcome = "rejected" if intent["action"] == "reject" else "promoted"
        return PassResult(outcome, intent["name"])

    def _decide(self, skipped: list[str]) -> Intent:
        """Validate the claimed bundle: the promote or reject half of its intent."""
        try:
            if skipped:
                raise BundleRejected("unsafe_path", f"special file {skipped[0]} in the bundle")
            scan = check_tree(self.layout.incoming)
            if scan.hard_linked:
                log.info("copying %d hard-linked files so that the version is private",
                         len(scan.hard_linked))
                volume.break_hard_links(self.layout, scan.hard_linked)
            manifest = check_contents(self.layout.incoming, self.config.manifest_name,
                                      self.config.require_manifest)
            return {"action": "promote", "name": self._version_name(manifest)}
        except BundleRejected as exc:
            name = generated_name(self.clock(), set(volume.list_dirs(self.layout.rejected)))
            return {"action": "reject", "name": name, "reason": exc.reason, "detail": exc.detail}

    def _version_name(self, manifest: Manifest | None) -> str:
        existing = set(volume.list_dirs(self.layout.versions))
        if manifest is None or manifest.version is None:
            return generated_name(self.clock(), existing)
        if manifest.version in existing:
            raise BundleRejected("version_exists", f"version {manifest.version} already exists")
        return manifest.version

    def _abandon_claim(self) -> None:
        try:
            if self.layout.incoming.exists():
                volume.unclaim(self.layout)
        except OSError as exc:
            log.error("cannot return the claim yet, the next pass will: %s", _describe(exc))

    # -- journalled changes ------------------------------------------------------------

    def _journal(self, intent: Intent) -> None:
        intent = {**intent, "time": self.clock()}
        fsops.atomic_write_json(self.layout.intent, intent)
        self._finish(intent)

    def _finish(self, intent: Intent) -> None:
        """Carry a journalled change through to its end; safe to repeat after a crash."""
        steps = {"promote": self._finish_promote, "reject": self._finish_reject,
                 "adopt": self._finish_adopt, "rollback": self._finish_rollback}
        steps[intent["action"]](intent)
        self.layout.intent.unlink()
        fsops.fsync_dir(self.layout.state)

    def _release(self, intent: Intent) -> None:
        ready = intent.get("ready")
        mark = volume.ReadyMark(*ready) if ready else None
        copied = intent.get("entries", []) if intent.get("copied") else []
        volume.release_staging(self.layout, copied, mark)

    def _switch(self, name: str) -> None:
        target = self.layout.version_dir(name)
        if not target.is_dir():
            raise TransientError(f"refusing to point {self.layout.current} at missing {target}")
        fsops.switch_link(self.layout.current, target)
        self._retention_due = True

    def _finish_promote(self, intent: Intent) -> None:
        name = intent["name"]
        if self.layout.incoming.exists():
            volume.publish_dir(self.layout.incoming, self.layout.version_dir(name), False)
        self._release(intent)
        self._switch(name)
        self._set_pending_reload(name, intent.get("previous"), rollback_allowed=True)
        duration = max(self.clock() - float(intent.get("claimed") or intent["time"]), 0.0)
        self._record_once(history.make_event("promoted", name, self.clock, duration_seconds=round(
            duration, 6), previous=intent.get("previous")))
        self.metrics.promotions.labels("success").inc()
        self.metrics.promotion_duration.observe(duration)
        self.metrics.last_success.set(self.clock())
        log.info("promoted %s in %.3f s (previous: %s)", name, duration, intent.get("previous"))

    def _finish_reject(self, intent: Intent) -> None:
        name, reason, detail = intent["name"], intent["reason"], intent["detail"]
        if self.layout.incoming.exists():
            volume.write_rejection(self.layout.incoming, {
                "reason": reason, "detail": detail, "time": history.rfc3339(intent["time"])})
            volume.publish_dir(self.layout.incoming, self.layout.rejected / name, False)
        self._release(intent)
        self._record_once(history.make_event("rejected", name, self.clock, reason=reason,
                                             detail=detail))
        self._count_failure("rejected", reason)
        self._retention_due = True
        log.warning("rejected the staged bundle as rejected/%s: %s: %s", name, reason, detail)

    def _finish_adopt(self, intent: Intent) -> None:
        name = intent["name"]
        if volume.link_state(self.layout).kind == "directory":
            volume.publish_dir(self.layout.current, self.layout.version_dir(name), True)
        self._switch(name)
        self._record_once(history.make_event("promoted", name, self.clock, reason="adopted"))
        log.info("adopted the former directory %s as version %s", self.layout.current, name)

    def _finish_rollback(self, intent: Intent) -> None:
        name, previous = intent["name"], intent.get("previous")
        self._switch(name)
        self._set_pending_reload(name, previous, rollback_allowed=False)
        self._record_once(history.make_event("rolled_back", name, self.clock,
                                             previous=previous, trigger=intent["trigger"]))
        log.warning("rolled back to %s (from %s, trigger %s)", name, previous,
                    intent["trigger"])

    def _record_once(self, record: history.Event) -> None:
        """Append to history unless a crash-interrupted pass already did."""
        last = history.read_from(self.layout.history, max(_size(self.layout.history) - 65536, 0))
        events = last[0]
        if events and _same_event(events[-1], record):
            return
        history.append(self.layout.history, record)

    # -- rollback ----------------------------------------------------------------------

    def rollback(self, target: str | None, trigger: str,
                 expect_current: str | None = None) -> str:
        """Switch current back to target (default: the previous version)."""
        with fsops.volume_lock(self.layout.lock, wait=True):
            self._recover()
            current = volume.current_name(self.layout)
            if expect_current is not None and current != expect_current:
                raise RollbackError(f"current moved on to {current}; not rolling back")
            target = target or history.previous_version(
                self.layout.history, history.read_tail(self.layout.history), current)
            if target is None:
                raise RollbackError("there is no previous version to roll back to")
            if not self.layout.version_dir(target).is_dir():
                raise RollbackError(f"version {target} does not exist in {self.layout.versions}")
            if target == current:
                return target
            self._journal({"action": "rollback", "name": target, "previous": current,
                           "trigger": trigger})
            self._retain()
        self.metrics.rollbacks.labels(trigger).inc()
        return target

    # -- reload ------------------------------------------------------------------------

    def _set_pending_reload(self, name: str, previous: str | None,
                            rollback_allowed: bool) -> None:
        if not self.reloader.enabled:
            self.layout.pending_reload.unlink(missing_ok=True)
            return
        fsops.atomic_write_json(self.layout.pending_reload, {
            "version": name, "path": str(self.layout.version_dir(name)),
            "previous": previous, "rollback_allowed": rollback_allowed})

    def deliver_reload(self) -> ReloadResult | None:
        """Send the pending reload, if any; the result (None when there was nothing)."""
        pending = fsops.read_json(self.layout.pending_reload)
        if not self.reloader.enabled or not isinstance(pending, dict):
            return None
        request = ReloadRequest(pending["version"], pending["path"], pending.get("previous"))
        result = self.reloader.reload(request)
        self._count_reload(result)
        with fsops.volume_lock(self.layout.lock, wait=True):
            if result.error is None:
                self._reload_succeeded(pending, result)
            else:
                self._reload_failed(pending, result)
        return result

    def _deliver_reload(self) -> bool:
        """Deliver the pending reload, rolling back on failure when configured."""
        try:
            result = self.deliver_reload()
            if result is None or result.error is None:
                return False
            pending = fsops.read_json(self.layout.pending_reload)
            if self._should_roll_back(pending):
                assert isinstance(pending, dict)
                self.rollback(pending["previous"], "reload_failure", pending["version"])
                self.deliver_reload()
        except (OSError, ValueError, KeyError, TypeError, RollbackError) as exc:
            log.error("reload bookkeeping failed: %s", _describe(exc))
        return True

    def _should_roll_back(self, pending: object) -> bool:
        return (self.config.rollback_on_reload_failure and isinstance(pending, dict)
                and bool(pending.get("rollback_allowed")) and pending.get("previous") is not None)

    def _reload_succeeded(self, pending: dict[str, Any], result: ReloadResult) -> None:
        if fsops.read_json(self.layout.pending_reload) == pending:
            self.layout.pending_reload.unlink()
        history.append(self.layout.history, history.make_event(
            "reload", pending["version"], self.clock, outcome="success",
            duration_seconds=round(result.duration, 6)))
        self._reload_failure_recorded = None
        log.info("model server reloaded %s", pending["version"])

    def _reload_failed(self, pending: dict[str, Any], result: ReloadResult) -> None:
        assert result.error is not None
        log.warning("reload of %s failed (%s): %s; retrying on later polls",
                    pending["version"], result.error.reason, result.error.detail)
        if self._reload_failure_recorded != pending["version"]:
            self._reload_failure_recorded = pending["version"]
            history.append(self.layout.history, history.make_event(
                "reload", pending["version"], self.clock, outcome="failure",
                reason=result.error.reason, duration_seconds=round(result.duration, 6)))

    def _count_reload(self, result: ReloadResult) -> None:
        self.metrics.reload_requests.labels("success").inc(result.attempts - result.failed_attempts)
        self.metrics.reload_requests.labels("failure").inc(result.failed_attempts)
        if result.error is not None:
            self.metrics.reload_failures.labels(result.error.reason).inc()
        self.metrics.reload_duration.observe(result.duration)

    # -- retention and observation -----------------------------------------------------

    def _retain(self) -> None:
        events = history.read_tail(self.layout.history)
        current = volume.current_name(self.layout)
        protected = {current, history.previous_version(self.layout.history, events, current)}
        ordered = retention.order_versions(volume.list_dirs(self.layout.versions),
                                           history.promotion_order(events))
        doomed = [self.layout.version_dir(v) for v in
                  retention.versions_to_delete(ordered, self.config.keep_versions, protected)]
        doomed += [self.layout.rejected / r for r in retention.rejected_to_delete(
            volume.list_dirs(self.layout.rejected), self.config.keep_rejected)]
        for path in doomed:
            log.info("retention: deleting %s", path)
            volume.move_to_trash(self.layout, path)
        fsops.empty_dir(self.layout.trash)

    def _observe(self) -> None:
        try:
            name = volume.current_name(self.layout)
            if name != self._current:
                self._current = name
                self.metrics.set_current(name)
                self._manifest_interval = self._read_manifest_interval(name)
            self.metrics.staged_pending.set(1 if self.layout.ready.exists() else 0)
        except OSError as exc:
            log.error("cannot read the volume: %s", _describe(exc))
        self.metrics.last_poll.set(self.clock())

    def _read_manifest_interval(self, name: str | None) -> float | None:
        if name is None:
            return None
        path = self.layout.version_dir(name) / self.config.manifest_name
        try:
            return check_manifest_interval(manifest_poll_interval(fsops.read_json(path)))
        except (ValueError, OSError) as exc:
            log.warning("ignoring the poll interval in %s: %s", path, exc)
            return None

    def interval(self) -> float:
        return resolve_interval(self.config.poll_override, self._manifest_interval,
                                self.config.poll_default)

    def _count_failure(self, outcome: str, reason: str) -> None:
        self.metrics.promotions.labels(outcome).inc()
        self.metrics.promotion_failures.labels(reason).inc()


def _same_event(a: history.Event, b: history.Event) -> bool:
    keys = ("event", "version", "previous", "reason", "trigger")
    return all(a.get(k) == b.get(k) for k in keys)


def _size(path: Any) -> int:
    try:
        return int(path.stat().st_size)
    except FileNotFoundError:
        return 0


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc)
