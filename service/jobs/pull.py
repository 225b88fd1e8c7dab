"""The pull job (SPEC section 12): follow an OCI reference and stage what it names.

Each run makes one HEAD request. A digest that is new (not remembered in
``.sidecar/pulled.jsonl``) is downloaded into ``.sidecar/pull/sha256-<hex>/`` (see
:mod:`service.oci.pull`) without the volume lock, then handed to ``STAGING_DIR`` as a
careful producer does: only when staging is empty and has no READY, files first
(durable), READY last. The promotion job then validates it like any bundle.

State in ``.sidecar/`` (never in a version directory):

- ``pulled.jsonl``: one line per digest event, ``{"digest", "state", "version", "time"}``
  with state ``staged``, ``promoted`` or ``rejected``; a digest found there is never
  pulled again, across restarts. Promotion calls :func:`record_outcome`.
- ``pull-staged.json``: the digest of the bundle handed to staging, with the sha256 of
  its manifest, so the promotion side links the digest to the version
  (:func:`staged_digest`). ``state`` is ``moving`` during the handoff (a crash then is
  finished forward by the next run) and ``ready`` once READY exists.
- ``pull.lock``: keeps two sidecars on one volume from pulling at once (never the
  volume lock, which is the promotion's).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service import fsops, history, jsonfile
from service.bundle import sha256_of
from service.errors import LockBusy, SidecarError, StateDamaged
from service.layout import Layout
from service.oci.artifact import Layer
from service.oci.check import SourceCheck
from service.oci.protocol import RegistryError
from service.oci.pull import PullDir, download, layer_paths, prune, reusable_files
from service.oci.reference import DIGEST_RE, Reference
from service.pull_metrics import PullMetrics

if TYPE_CHECKING:
    from service.oci.client import RegistryClient

log = logging.getLogger(__name__)
STAGED, PROMOTED, REJECTED = "staged", "promoted", "rejected"
OUTCOMES = (PROMOTED, REJECTED)


class PullStopped(Exception):
    """The daemon is stopping: the download is abandoned, its partial files kept."""


@dataclass(frozen=True)
class PullResult:
    """``up_to_date``, ``known``, ``staged``, ``waiting`` (downloaded, staging busy),
    ``failed`` (with ``reason``), ``busy`` (another pull holds the pull lock) or
    ``stopped`` (:meth:`PullJob.stop` was called during the download)."""

    outcome: str
    digest: str | None = None
    reason: str | None = None


# -- the remembered digests: shared with the promotion side --------------------------------


MAX_RECORD_BYTES = 4096


def parse_record(line: bytes) -> dict[str, Any] | None:
    """One ``pulled.jsonl`` record, or None for a torn, damaged or foreign line."""
    if not line.strip() or len(line) > MAX_RECORD_BYTES:
        return None
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        return None
    digest = value.get("digest") if isinstance(value, dict) else None
    return value if isinstance(digest, str) and DIGEST_RE.match(digest) else None


def remembered(state: Path) -> dict[str, dict[str, Any]]:
    """digest -> its last record in ``pulled.jsonl``; unreadable lines are skipped (a
    digest lost that way is at worst pulled once more and validated again)."""
    try:
        data = (state / "pulled.jsonl").read_bytes()
    except FileNotFoundError:
        return {}
    records: dict[str, dict[str, Any]] = {}
    for line in data.split(b"\n"):
        record = parse_record(line)
        if record is not None:
            records[record["digest"]] = record
    return records


def remember(
    state: Path,
    digest: str,
    status: str,
    version: str | None,
    clock: Callable[[], float] = time.time,
) -> None:
    """Append one record to ``pulled.jsonl``, fsynced."""
    record = {
        "digest": digest,
        "state": status,
        "version": version,
        "time": history.rfc3339(clock()),
    }
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(
        state / "pulled.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644
    )
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def staged_digest(state: Path, manifest_bytes: bytes | None) -> str | None:
    """The digest of the pulled bundle whose manifest is manifest_bytes, if it is the one
    the pull job staged; the promotion side calls this on the bundle it claimed."""
    record = read_state(state / "pull-staged.json")
    if not isinstance(record, dict) or not isinstance(record.get("digest"), str):
        return None
    expected = record.get("manifest_sha256")
    actual = hashlib.sha256(manifest_bytes).hexdigest() if manifest_bytes is not None else None
    return record["digest"] if expected == actual else None


def record_outcome(
    state: Path,
    digest: str,
    outcome: str,
    version: str | None,
    clock: Callable[[], float] = time.time,
) -> None:
    """Promotion's verdict on a pulled bundle: ``promoted`` (with its version name) or
    ``rejected``. Remembered for good; the staged record is cleared."""
    assert outcome in OUTCOMES, outcome
    remember(state, digest, outcome, version, clock)
    record = read_state(state / "pull-staged.json")
    if isinstance(record, dict) and record.get("digest") == digest:
        (state / "pull-staged.json").unlink(missing_ok=True)
        fsops.fsync_dir(state)


def digest_of_version(state: Path, version: str | None) -> str | None:
    """The digest a promoted version was pulled from, if it was pulled."""
    if version is None:
        return None
    for digest, record in reversed(remembered(state).items()):
        if record.get("state") == PROMOTED and record.get("version") == version:
            return digest
    return None


def read_state(path: Path) -> object | None:
    """A JSON state file, or None when it is missing or damaged; a damaged one is set
    aside as ``<name>.damaged-<UTC time>`` and logged (the next handoff rewrites it)."""
    try:
        return jsonfile.load_json(path)
    except StateDamaged as exc:
        aside = jsonfile.set_aside(path, time.time())
        log.error("%s; moved aside to %s", exc.detail, aside)
        return None


# -- the volume: thin I/O ------------------------------------------------------------------


def current_version(paths: Layout) -> str | None:
    try:
        target = Path(os.path.realpath(paths.current))
    except OSError:
        return None
    is_version = target.parent == Path(os.path.realpath(paths.versions)) and target.is_dir()
    return target.name if is_version else None


def staging_free(paths: Layout) -> bool:
    paths.staging.mkdir(parents=True, exist_ok=True)
    return not os.path.lexists(paths.ready) and not any(os.scandir(paths.staging))


def move_into_staging(source: Path, staging: Path) -> None:
    """Move every entry of source into staging (copied with fsync across filesystems)."""
    for entry in sorted(os.listdir(source)):
        src, dst = source / entry, staging / entry
        try:
            os.rename(src, dst)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            fsops.copy_entry(src, dst)
            if dst.is_dir() and not dst.is_symlink():
                fsops.sync_tree(dst)
            elif not dst.is_symlink():
                fsops.fsync_file(dst)
            fsops.remove_entry(src)
    fsops.fsync_dir(staging)


def write_ready(ready: Path) -> None:
    """READY created in place (a temporary name in staging would become part of a bundle
    after a crash)."""
    fd = os.open(ready, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fsops.fsync_dir(ready.parent)


def staging_holds(staging: Path, layers: list[Layer]) -> bool:
    """Whether staging holds exactly these files with these digests (crash recovery)."""
    top = {layer.path.split("/", 1)[0] for layer in layers}
    if set(os.listdir(staging)) != top:
        return False
    for layer in layers:
        path = staging / layer.path
        if not path.is_file() or path.is_symlink():
            return False
        with path.open("rb") as fh:
            if "sha256:" + hashlib.file_digest(fh, "sha256").hexdigest() != layer.digest:
                return False
    return True


# -- the job -------------------------------------------------------------------------------


class PullJob:
    """One run per SOURCE_POLL_SECONDS; everything it touches is injected.

    ``check`` makes the HEAD of every run; ``open_client`` makes the downloading client
    the first time a digest must be downloaded (its modules stay out of an idle sidecar).
    """

    def __init__(
        self,
        paths: Layout,
        reference: Reference,
        check: SourceCheck,
        open_client: Callable[[], RegistryClient],
        metrics: PullMetrics,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        on_chunk: Callable[[int], None] | None = None,
    ) -> None:
        self.paths = paths
        self.reference = reference
        self.check = check
        self.open_client = open_client
        self._client: RegistryClient | None = None
        self.metrics = metrics
        self.clock = clock
        self.monotonic = monotonic
        self.on_chunk = on_chunk
        self._last_failure: tuple[str, str] | None = None
        self._stopping = threading.Event()

    @property
    def client(self) -> RegistryClient:
        if self._client is None:
            self._client = self.open_client()
        return self._client

    def stop(self) -> None:
        """Abandon a download in progress at its next chunk (SIGTERM: exit within 5 s).
        The partial files stay and the next start resumes them."""
        self._stopping.set()

    def _chunk(self, length: int) -> None:
        if self.on_chunk is not None:
            self.on_chunk(length)
        if self._stopping.is_set():
            raise PullStopped

    def run(self) -> PullResult:
        """One check (and pull, and handoff); failures are counted and logged, never raised."""
        try:
            self.paths.state.mkdir(parents=True, exist_ok=True)
            with fsops.volume_lock(self.paths.pull_lock, wait=False):
                return self._run()
        except LockBusy:
            return PullResult("busy")
        except OSError as exc:
            return self._failed(None, "io_error", f"{exc.filename or ''}: {exc.strerror}")

    def _run(self) -> PullResult:
        self._finish_handoff()
        self.metrics.source_checks.inc()
        try:
            digest = self.check.head_manifest(self.reference.target).digest
        except SidecarError as exc:
            return self._failed(None, _reason(exc), exc.detail)
        self.metrics.set_digest(digest)
        known = remembered(self.paths.state)
        current = digest_of_version(self.paths.state, current_version(self.paths))
        self.metrics.source_up_to_date.set(1 if current == digest else 0)
        if digest in known:
            return PullResult("up_to_date" if current == digest else "known", digest)
        pull = PullDir.of(self.paths.pull, digest)
        if not pull.complete.exists():
            failure = self._download(pull, digest)
            if failure is not None:
                return failure
        return self._handoff(pull, digest)

    def _download(self, pull: PullDir, digest: str) -> PullResult | None:
        """Download the artifact; None when it is complete, else the result to return."""
        prune(self.paths.pull, keep=pull.root)
        before, started = self.client.stats.bytes_received, self.monotonic()
        log.info("pulling %s (%s)", self.reference, digest)
        try:
            reason, detail = self._attempt(pull, digest)
        except PullStopped:
            self.metrics.pull_bytes.inc(self.client.stats.bytes_received - before)
            log.info("pull of %s stopped; it resumes at the next start", digest)
            return PullResult("stopped", digest)
        received, duration = self.client.stats.bytes_received - before, self.monotonic() - started
        self.metrics.pull_bytes.inc(received)
        self.metrics.pull_duration.observe(duration)
        self.metrics.pulls.labels("failure" if reason else "success").inc()
        self._pulled_event(digest, received, duration, reason)
        if reason is not None:
            return self._failed(digest, reason, detail)
        self._last_failure = None
        return None

    def _attempt(self, pull: PullDir, digest: str) -> tuple[str | None, str]:
        """(None, "") when the download completed, else the failure reason and detail."""
        reuse = reusable_files(self._current_dir(), self.paths.manifest_name)
        try:
            progress = download(self.client, pull, digest, reuse, self._chunk)
        except SidecarError as exc:
            return _reason(exc), exc.detail
        except OSError as exc:
            return "io_error", f"{exc.filename or pull.root}: {exc.strerror}"
        log.info(
            "pulled %s: %s files downloaded, %s reused from current",
            digest,
            progress.downloaded,
            progress.reused,
        )
        return None, ""

    def _current_dir(self) -> Path | None:
        name = current_version(self.paths)
        return self.paths.versions / name if name else None

    def _pulled_event(
        self, digest: str, received: int, duration: float, reason: str | None
    ) -> None:
        if reason is not None and self._last_failure == (digest, reason):
            return  # the same failure again: counted in metrics, not another history line
        event = history.make_event(
            "pulled",
            None,
            self.clock,
            digest=digest,
            reference=str(self.reference),
            bytes=received,
            duration_seconds=round(duration, 6),
            outcome="failure" if reason else "success",
            reason=reason,
        )
        history.append(self.paths.history, event)

    def _failed(self, digest: str | None, reason: str, detail: str) -> PullResult:
        self.metrics.pull_failures.labels(reason).inc()
        if self._last_failure != (digest or "", reason):
            log.error("pull of %s failed (%s): %s", self.reference, reason, detail)
        self._last_failure = (digest or "", reason)
        return PullResult("failed", digest, reason)

    # -- handing the bundle to staging -------------------------------------------------

    def _handoff(self, pull: PullDir, digest: str) -> PullResult:
        if not staging_free(self.paths):
            log.info("pulled %s waits: %s is not free", digest, self.paths.staging)
            return PullResult("waiting", digest)
        manifest = pull.bundle / self.paths.manifest_name
        manifest_sha = sha256_of(manifest) if manifest.is_file() else None
        self._write_record(digest, manifest_sha, "moving")
        move_into_staging(pull.bundle, self.paths.staging)
        remember(self.paths.state, digest, STAGED, None, self.clock)
        write_ready(self.paths.ready)
        self._write_record(digest, manifest_sha, "ready")
        fsops.remove_entry(pull.root)
        log.info("staged %s from %s", digest, self.reference)
        return PullResult("staged", digest)

    def _write_record(self, digest: str, manifest_sha: str | None, status: str) -> None:
        fsops.atomic_write_json(
            self.paths.pull_staged,
            {
                "digest": digest,
                "reference": str(self.reference),
                "manifest_sha256": manifest_sha,
                "state": status,
                "time": history.rfc3339(self.clock()),
            },
        )

    def _finish_handoff(self) -> None:
        """Finish a handoff a crash interrupted: files still to move, or READY missing."""
        record = read_state(self.paths.pull_staged)
        if not isinstance(record, dict) or record.get("state") != "moving":
            return
        digest = str(record.get("digest"))
        pull = PullDir.of(self.paths.pull, digest)
        if not os.path.lexists(self.paths.ready) and self._ours_in_staging(pull):
            if pull.bundle.is_dir():
                move_into_staging(pull.bundle, self.paths.staging)
            remember(self.paths.state, digest, STAGED, None, self.clock)
            write_ready(self.paths.ready)
            log.warning("finished the interrupted handoff of %s", digest)
        record["state"] = "ready"
        fsops.atomic_write_json(self.paths.pull_staged, record)
        if pull.root.exists():
            fsops.remove_entry(pull.root)

    def _ours_in_staging(self, pull: PullDir) -> bool:
        """Whether staging holds (part of) our bundle and nothing else: then READY is ours
        to write. Files left in the pull dir mean the move was cut short; with none left,
        staging must match the artifact byte for byte (else the bundle was taken and a
        producer is writing the next one)."""
        if not pull.manifest.exists():
            return False
        if pull.bundle.is_dir() and any(os.scandir(pull.bundle)):
            return True
        return staging_holds(self.paths.staging, layer_paths(pull))


def _reason(exc: SidecarError) -> str:
    if isinstance(exc, RegistryError):
        return exc.reason
    return "auth" if exc.reason == "config" else "io_error"  # the auth file is the config
