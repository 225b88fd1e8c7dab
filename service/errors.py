"""The few exceptions of the sidecar, each carrying a fixed ``reason``."""

from __future__ import annotations

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
PROMOTION_FAILURE_REASONS = (*REJECTION_REASONS, "io_error")
PULL_FAILURE_REASONS = ("connection", "auth", "not_found", "digest_mismatch", "io_error")
RELOAD_FAILURE_REASONS = ("connection", "timeout", "http_status", "verify")


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


class RollbackError(SidecarError):
    """A rollback could not be done (no such version, nothing to roll back to)."""

    reason = "rollback"
