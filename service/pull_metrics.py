"""The pull metrics of SPEC section 12, on an injected registry, fixed labels from 0."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.errors import PULL_FAILURE_REASONS

PULL_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
PULL_OUTCOMES = ("success", "failure")


class PullMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.pulls = Counter(
            "model_sidecar_pulls_total",
            "Downloads started after a digest change, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.pull_failures = Counter(
            "model_sidecar_pull_failures_total",
            "Failed source checks and downloads, by reason (each counted once).",
            ["reason"],
            registry=registry,
        )
        self.pull_bytes = Counter(
            "model_sidecar_pull_bytes_total",
            "Bytes received from the registry (manifests and blobs).",
            registry=registry,
        )
        self.pull_duration = Histogram(
            "model_sidecar_pull_duration_seconds",
            "Time of a download, success or failure.",
            buckets=PULL_BUCKETS,
            registry=registry,
        )
        self.source_checks = Counter(
            "model_sidecar_source_checks_total",
            "Checks of the SOURCE reference (one HEAD each).",
            registry=registry,
        )
        self.source_up_to_date = Gauge(
            "model_sidecar_source_up_to_date",
            "1 when current came from the digest the SOURCE reference names now.",
            registry=registry,
        )
        self.source_digest = Gauge(
            "model_sidecar_source_digest_info",
            "The digest the SOURCE reference names now (value 1).",
            ["digest"],
            registry=registry,
        )
        for outcome in PULL_OUTCOMES:
            self.pulls.labels(outcome)
        for reason in PULL_FAILURE_REASONS:
            self.pull_failures.labels(reason)

    def set_digest(self, digest: str) -> None:
        self.source_digest.clear()
        self.source_digest.labels(digest).set(1)
