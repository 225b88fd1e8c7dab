"""The promotion job: recover, take a staged bundle, switch, retain, deliver the reload.

The order of the steps is the crash-safety argument (SPEC section 4):

1. claim: the staged entries are renamed into ``.sidecar/work/incoming`` (copied
   across filesystems); READY stays, so a crash here is undone by putting them back;
2. the claimed bundle is validated and a name decided; a stop asked meanwhile abandons
   the claim (still before the journal, so undoing it is safe);
3. the claim and every file are made durable (fsync of exactly the bundle's files and
   the directories the claim changed); then the decision is journalled in
   ``.sidecar/intent.json`` (:mod:`service.journal`); from here on a crash is finished
   forward by the next pass, never undone;
4. the bundle is renamed to ``versions/<name>`` (or ``rejected/<name>``), both
   directories fsynced;
5. staging is emptied, READY last and only the READY that was claimed;
6. ``current`` is switched (temporary symlink, rename, fsync of the directory);
7. the pending reload and the history record are written, the journal removed.

State files that cannot be understood are set aside and counted (``state_damaged``);
the pass then goes on from what the volume shows.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from service import fsops, history, retention, volume
from service.bundle import (
    CHUNK,
    Manifest,
    check_contents,
    check_files,
    check_tree,
    is_valid_version,
    manifest_poll_interval,
    read_signed_manifest,
)
from service.changes import OUTCOME_LABELS, JournalledChanges
from service.config import Config
from service.delivery import ReloadDelivery
from service.errors import (
    BundleRejected,
    Cancelled,
    ConfigError,
    LockBusy,
    RollbackError,
    StateDamaged,
    TransientError,
    doing,
    one_line,
)
from service.interval import check_manifest_interval, resolve_interval
from service.journal import Claim, Intent, Promote, Reject, Rollback, Trigger
from service.layout import Layout
from service.manifest_reader import read_manifest_file
from service.metrics import Metrics
from service.naming import generated_name
from service.progress import Progress
from service.recovery import Recovery
from service.reload import Reloader

if TYPE_CHECKING:
    from service.signing import TrustedKeys

log = logging.getLogger(__name__)
PassOutcome = Literal["idle", "promoted", "rejected", "io_error", "busy", "cancelled"]
_UNKNOWN = "\x00unknown"


@dataclass(frozen=True)
class PassResult:
    outcome: PassOutcome
    version: str | None = None
    reload_failed: bool = False

    @property
    def failed(self) -> bool:
        return self.outcome in ("rejected", "io_error") or self.reload_failed


class Promoter:
    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        reloader: Reloader,
        clock: Callable[[], float] = time.time,
        progress: Progress | None = None,
        retried_later: bool = True,
        record_pending: bool | None = None,
    ) -> None:
        self.config = config
        self.layout = Layout.from_config(config)
        self.metrics = metrics
        self.clock = clock
        self.progress = progress or Progress()
        self.delivery = ReloadDelivery(
            self.layout, reloader, metrics, self._now, self._damaged, retried_later, record_pending
        )
        self.changes = JournalledChanges(self.layout, metrics, self.delivery, self._now)
        self.recovery = Recovery(self.layout, self.changes, self._now, self._damaged)
        self.pass_lock = threading.Lock()
        self.changing = threading.Event()  # set while the pass holds the volume lock
        self._current: str | None = _UNKNOWN
        self._manifest_interval: float | None = None
        self._history_offset: int | None = None

    def _now(self) -> float:
        return self.clock()

    # -- the pass ----------------------------------------------------------------------

    def run_pass(self, wait: bool = False) -> PassResult:
        """Run one pass; errors are counted and logged, never raised."""
        with self.pass_lock:
            self.metrics.polls.inc()
            result = self._guarded_pass(wait)
            if result.outcome not in ("busy", "cancelled") and self._deliver():
                result = PassResult(result.outcome, result.version, reload_failed=True)
            self._observe()
            return result

    def _guarded_pass(self, wait: bool) -> PassResult:
        try:
            with doing("creating the volume's directories"):
                volume.ensure_dirs(self.layout)
            with doing("the promotion pass"), fsops.volume_lock(self.layout.lock, wait):
                self.changing.set()
                try:
                    return self._locked_pass()
                finally:
                    self.changing.clear()
        except LockBusy as exc:
            log.info("skipping this pass: %s", exc.detail)
            return PassResult("busy")
        except (OSError, TransientError) as exc:
            self._count_failure("io_error", "io_error")
            log.error("promotion pass failed, the next poll retries: %s", one_line(exc))
            return PassResult("io_error")

    def _locked_pass(self) -> PassResult:
        self._recover()
        self._count_external_events()
        taken = volume.ready_present(self.layout)
        result = self._take_staged() if taken else PassResult("idle")
        if self.changes.retention_due:
            self.changes.retention_due = False
            self._retain()
        return result

    def _deliver(self) -> bool:
        """Deliver the pending reload (rolling back on failure when configured)."""
        try:
            return self.delivery.send_pending_or_roll_back(
                self.config.rollback_on_reload_failure,
                lambda previous, failed: self.rollback(previous, "reload_failure", failed),
            )
        except (OSError, RollbackError, StateDamaged) as exc:
            log.error("cannot record the reload's outcome: %s", one_line(exc))
            return True

    def _damaged(self, exc: StateDamaged) -> None:
        log.error("damaged state: %s; going on from what the volume shows", exc.detail)
        self.metrics.promotion_failures.labels("state_damaged").inc()

    def _recover(self) -> None:
        if self.recovery.run():
            self._history_offset = None

    def _count_external_events(self) -> None:
        """Count (and log) rollbacks that a command recorded in the shared history."""
        if self._history_offset is None:
            self._history_offset = _size(self.layout.history)
            return
        events, self._history_offset = history.read_from(self.layout.history, self._history_offset)
        for event in events:
            if event.get("event") == "rolled_back" and event.get("trigger") == "manual":
                log.info(
                    "a rollback command switched current to %s (from %s)",
                    event.get("version"),
                    event.get("previous") or "nothing",
                )
                self.metrics.rollbacks.labels("manual").inc()
                self.changes.retention_due = True

    # -- taking a staged bundle --------------------------------------------------------

    def _take_staged(self) -> PassResult:
        ready = volume.ReadyMark.of(self.layout.ready)
        entries = volume.staged_entries(self.layout)
        previous = volume.current_name(self.layout)
        try:
            with doing(f"claiming the staged bundle in {self.layout.staging}"):
                copied, skipped = volume.claim(self.layout, entries, self.progress)
            mark = (ready.inode, ready.mtime_ns) if ready else None
            claim = Claim(mark, tuple(entries), copied, self.clock())
            intent = self._decide(skipped, claim, previous)
            # Durable before the journal says "roll forward": every file of the bundle and
            # the directories the claim changed, and nothing of anyone else's.
            with doing(f"making {self.layout.incoming} durable"):
                fsops.sync_tree(self.layout.incoming, also=(self.layout.work, self.layout.staging))
        except Cancelled:
            self._abandon_claim()
            log.info("stopping: the validation in progress was abandoned, the bundle stays staged")
            return PassResult("cancelled")
        except (OSError, TransientError) as exc:
            self._abandon_claim()
            self._count_failure("io_error", "io_error")
            log.error("cannot take the staged bundle, the next poll retries: %s", one_line(exc))
            return PassResult("io_error")
        self.changes.apply(intent)
        return PassResult("rejected" if isinstance(intent, Reject) else "promoted", intent.name)

    def _decide(self, skipped: list[str], claim: Claim, previous: str | None) -> Intent:
        """Validate the claimed bundle: the promote or reject intent. With
        TRUSTED_KEYS_FILE the signature is checked first (SPEC 12); an unreadable keys
        file is a TransientError: the claim is returned and the bundle stays staged."""
        root, name = self.layout.incoming, self.config.manifest_name
        keys = self._trusted_keys()
        digest = self._pulled_digest(root / name)
        try:
            # Only the manifest and its signature are read before the signature verified.
            signed = None if keys is None else read_signed_manifest(root, name, keys, self.progress)
            if skipped:
                raise BundleRejected("unsafe_path", f"special file {skipped[0]} in the bundle")
            scan = check_tree(root, name)
            if scan.hard_linked:
                log.info(
                    "copying %d hard-linked files so that the version is private",
                    volume.break_hard_links(self.layout),
                )
            manifest = self._checked_manifest(root, name, signed)
            return Promote(self._version_name(manifest), previous, claim, self.clock(), digest)
        except BundleRejected as exc:
            return self._reject(exc, claim, digest)

    def _trusted_keys(self) -> TrustedKeys | None:
        """TRUSTED_KEYS_FILE re-read for this validation (a rotated Secret applies)."""
        if self.config.trusted_keys_file is None:
            return None
        from service import signing  # PyNaCl only when signatures are configured

        return signing.reload_trusted_keys(self.config.trusted_keys_file)

    def _checked_manifest(self, root: Path, name: str, signed: Manifest | None) -> Manifest | None:
        if signed is None:
            return check_contents(root, name, self.config.require_manifest, self.progress)
        from service import signing

        signing.check_coverage(root, name, signed.files)
        check_files(root, signed.files, self.progress)
        return signed

    def _reject(self, exc: BundleRejected, claim: Claim, digest: str | None) -> Reject:
        name = generated_name(self.clock(), set(volume.list_dirs(self.layout.rejected)))
        return Reject(name, exc.reason, exc.detail, claim, self.clock(), digest)

    def _pulled_digest(self, manifest: Path) -> str | None:
        """The registry digest of a bundle the pull job staged (None for any other):
        the staged record names the sha256 of the manifest it handed over."""
        record_path = self.layout.state / "pull-staged.json"
        if not record_path.exists():
            return None  # nothing was ever pulled: no import, no read
        from service.jobs.pull import read_state

        record = read_state(record_path)
        if not isinstance(record, dict) or not isinstance(record.get("digest"), str):
            return None
        expected = record.get("manifest_sha256")
        return record["digest"] if expected == _manifest_sha256(manifest) else None

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
            log.error("cannot return the claim yet, the next pass will: %s", one_line(exc))

    # -- journalled changes ------------------------------------------------------------

    # -- rollback ----------------------------------------------------------------------

    def rollback(
        self, target: str | None, trigger: Trigger, expect_current: str | None = None
    ) -> str:
        """Switch current back to target (default: the previous version)."""
        if target is not None and not is_valid_version(target):
            raise ConfigError(
                f"VERSION: {target[:80]!r} is not a version name (the name "
                f"of a directory in {self.layout.versions}, never a path)"
            )
        with fsops.volume_lock(self.layout.lock, wait=True):
            self._recover()
            current = volume.current_name(self.layout)
            if expect_current is not None and current != expect_current:
                raise RollbackError(f"current moved on to {current}; not rolling back")
            target = target or history.previous_version(
                self.layout.history, history.read_tail(self.layout.history), current
            )
            if target is None:
                raise RollbackError("there is no previous version to roll back to")
            path = self.layout.version_dir(target)
            if not path.is_dir() or path.is_symlink():
                raise RollbackError(f"version {target} does not exist in {self.layout.versions}")
            if target == current:
                return target
            self.changes.apply(Rollback(target, current, trigger, self.clock()))
            self._retain()
        self.metrics.rollbacks.labels(trigger).inc()
        return target

    # -- retention and observation -----------------------------------------------------

    def _retain(self) -> None:
        events = history.read_tail(self.layout.history)
        current = volume.current_name(self.layout)
        protected = {current, history.previous_version(self.layout.history, events, current)}
        ordered = retention.order_versions(
            volume.list_dirs(self.layout.versions), history.promotion_order(events)
        )
        doomed = [
            self.layout.version_dir(v)
            for v in retention.versions_to_delete(ordered, self.config.keep_versions, protected)
        ]
        doomed += [
            self.layout.rejected / r
            for r in retention.rejected_to_delete(
                volume.list_dirs(self.layout.rejected), self.config.keep_rejected
            )
        ]
        with doing("retention"):
            for path in doomed:
                log.info("retention: deleting %s", path)
                volume.move_to_trash(self.layout, path)
            fsops.empty_dir(self.layout.trash)

    def current(self) -> str | None:
        """The current version, its manifest's interval re-read when it changed."""
        name = volume.current_name(self.layout)
        if name != self._current:
            self._current = name
            self.metrics.set_current(name)
            self._manifest_interval = self._read_manifest_interval(name)
        return name

    def _observe(self) -> None:
        try:
            self.current()
            self.metrics.staged_pending.set(1 if volume.ready_present(self.layout) else 0)
        except OSError as exc:
            log.error("cannot read the volume: %s", one_line(exc))
        self.metrics.last_poll.set(self.clock())

    def _read_manifest_interval(self, name: str | None) -> float | None:
        if name is None:
            return None
        path = self.layout.version_dir(name) / self.config.manifest_name
        try:
            doc = read_manifest_file(path)  # bounded memory, whatever the manifest holds
            return check_manifest_interval(manifest_poll_interval(doc))
        except (ValueError, OSError, BundleRejected) as exc:
            log.warning("ignoring the poll interval in %s: %s", path, one_line(exc))
            return None

    def interval(self) -> float:
        return resolve_interval(
            self.config.poll_override, self._manifest_interval, self.config.poll_default
        )

    def _count_failure(self, outcome: PassOutcome, reason: str) -> None:
        self.metrics.promotions.labels(OUTCOME_LABELS[outcome]).inc()
        self.metrics.promotion_failures.labels(reason).inc()


def _manifest_sha256(path: Path) -> str | None:
    """The sha256 of the manifest, streamed (never through a symlink), None if unreadable."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb", opener=_nofollow) as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return None
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def _nofollow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
