"""The few exceptions of the sidecar, each carrying a fixed ``reason``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

REJECTION_REASONS = (
    "manifest_missing",
    "manifest_invalid",
    "file_missing",
    "size_mismatch",
    "checksum_mismatch",
    "unsafe_path",
    "version_exists",
    "empty_bundle",
    "signature_missing",
    "signature_invalid",
)
PROMOTION_FAILURE_REASONS = (*REJECTION_REASONS, "io_error", "state_damaged")
PULL_FAILURE_REASONS = ("connection", "auth", "not_found", "digest_mismatch", "io_error")
RELOAD_FAILURE_REASONS = ("connection", "timeout", "http_status", "verify", "token")


class SidecarError(Exception):
    """Base class: ``reason`` is a label value from a fixed set, ``detail`` is for humans."""

    reason: str = "error"

    def __init__(self, detail: str, reason: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if reason is not None:
            self.reason = reason


class ConfigError(SidecarError):
    """A flag or variable has an invalid value; the message names it."""

    reason = "config"


class BundleRejected(SidecarError):
    """The staged bundle is invalid and will not be retried."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REJECTION_REASONS, reason
        super().__init__(detail, reason)


class TransientError(SidecarError):
    """An I/O failure while promoting; the bundle stays staged and is retried."""

    reason = "io_error"


class ReloadFailed(SidecarError):
    """The model server did not confirm the reload after all retries."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in RELOAD_FAILURE_REASONS, reason
        super().__init__(detail, reason)


class LockBusy(SidecarError):
    """Another sidecar or CLI command holds the volume's lock."""

    reason = "lock_busy"


class Cancelled(SidecarError):
    """A stop was asked while a validation or copy was in progress; nothing was lost."""

    reason = "cancelled"


class StateDamaged(SidecarError):
    """One of the sidecar's own state files cannot be understood."""

    reason = "state_damaged"


class RollbackError(SidecarError):
    """A rollback could not be done (no such version, nothing to roll back to)."""

    reason = "rollback"


@contextmanager
def doing(operation: str) -> Iterator[None]:
    """Name the operation an OSError interrupted (``one_line`` shows it first)."""
    try:
        yield
    except OSError as exc:
        if not getattr(exc, "__notes__", None):
            exc.add_note(operation)
        raise


def one_line(exc: BaseException) -> str:
    """An exception as one line for a log or an error message: for an OSError, the
    operation, what failed and on which path; never more than a message's first line."""
    if isinstance(exc, OSError) and exc.strerror:
        notes = getattr(exc, "__notes__", None)
        paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
        text = f"{exc.strerror}: {' -> '.join(paths)}" if paths else exc.strerror
        return f"{notes[0]}: {text}" if notes else text
    if isinstance(exc, SidecarError):
        return exc.detail.splitlines()[0] if exc.detail else exc.reason
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__
