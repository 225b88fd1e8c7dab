"""The metrics of SPEC section 10 on one registry (served by service.http_server)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service import __version__
from service.errors import PROMOTION_FAILURE_REASONS, RELOAD_FAILURE_REASONS

PROMOTION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
RELOAD_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """Every metric of the sidecar on one registry, fixed label values present from 0."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
            return Counter(name, doc, list(labels), registry=registry)

        def gauge(name: str, doc: str, labels: Iterable[str] = ()) -> Gauge:
            return Gauge(name, doc, list(labels), registry=registry)

        self.promotions = counter(
            "model_sidecar_promotions_total", "Staged bundles taken, by outcome.", ["outcome"]
        )
        self.promotion_failures = counter(
            "model_sidecar_promotion_failures_total", "Failed promotions by reason.", ["reason"]
        )
        self.promotion_duration = Histogram(
            "model_sidecar_promotion_duration_seconds",
            "Time from claiming a bundle to the switch of current.",
            buckets=PROMOTION_BUCKETS,
            registry=registry,
        )
        self.reload_requests = counter(
            "model_sidecar_reload_requests_total",
            "Reload HTTP requests sent (each retry is one).",
            ["outcome"],
        )
        self.reload_failures = counter(
            "model_sidecar_reload_failures_total",
            "Reloads that failed after their retries.",
            ["reason"],
        )
        self.reload_duration = Histogram(
            "model_sidecar_reload_duration_seconds",
            "Time of a reload, retries and verification included.",
            buckets=RELOAD_BUCKETS,
            registry=registry,
        )
        self.rollbacks = counter(
            "model_sidecar_rollbacks_total", "Rollbacks by trigger.", ["trigger"]
        )
        self.current_version = gauge(
            "model_sidecar_current_version_info",
            "The version current points to (value 1).",
            ["version"],
        )
        self.last_success = gauge(
            "model_sidecar_last_success_timestamp_seconds",
            "Unix time of the last successful promotion.",
        )
        self.last_poll = gauge(
            "model_sidecar_last_poll_timestamp_seconds", "Unix time of the end of the last poll."
        )
        self.poll_interval = gauge(
            "model_sidecar_poll_interval_seconds", "The resolved poll interval."
        )
        self.polls = counter("model_sidecar_polls_total", "Polls run.")
        self.staged_pending = gauge(
            "model_sidecar_staged_pending",
            "1 while a bundle is staged with READY and not yet taken.",
        )
        self.build_info = gauge("model_sidecar_build_info", "Sidecar build (value 1).", ["version"])
        self._init_labels()

    def _init_labels(self) -> None:
        for outcome in ("success", "rejected", "error"):
            self.promotions.labels(outcome)
        for reason in PROMOTION_FAILURE_REASONS:
            self.promotion_failures.labels(reason)
        for outcome in ("success", "failure"):
            self.reload_requests.labels(outcome)
        for reason in RELOAD_FAILURE_REASONS:
            self.reload_failures.labels(reason)
        for trigger in ("manual", "reload_failure"):
            self.rollbacks.labels(trigger)
        self.build_info.labels(__version__).set(1)

    def set_current(self, version: str | None) -> None:
        self.current_version.clear()
        if version is not None:
            self.current_version.labels(version).set(1)
