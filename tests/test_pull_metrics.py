"""service.pull_metrics: the SPEC 12 metrics, every fixed label value present from 0."""

from __future__ import annotations

import subprocess

from prometheus_client import CollectorRegistry, generate_latest

from service.errors import PULL_FAILURE_REASONS
from service.pull_metrics import PullMetrics
from tests.support import require_tool, sample


def test_fixed_labels_exist_at_zero() -> None:
    """pulls_total{outcome} and pull_failures_total{reason} exist with 0 before any pull."""
    registry = CollectorRegistry()
    PullMetrics(registry)
    for outcome in ("success", "failure"):
        assert sample(registry, "model_sidecar_pulls_total", outcome=outcome) == 0
    assert set(PULL_FAILURE_REASONS) == {
        "connection",
        "auth",
        "not_found",
        "digest_mismatch",
        "io_error",
    }
    for reason in PULL_FAILURE_REASONS:
        assert sample(registry, "model_sidecar_pull_failures_total", reason=reason) == 0
    for name in (
        "model_sidecar_pull_bytes_total",
        "model_sidecar_source_checks_total",
        "model_sidecar_source_up_to_date",
        "model_sidecar_pull_duration_seconds_count",
    ):
        assert sample(registry, name) == 0


def test_digest_info_names_only_the_current_digest() -> None:
    """source_digest_info holds one series: the digest the reference names now."""
    registry = CollectorRegistry()
    metrics = PullMetrics(registry)
    metrics.set_digest("sha256:" + "a" * 64)
    metrics.set_digest("sha256:" + "b" * 64)
    text = generate_latest(registry).decode()
    assert "a" * 64 not in text
    assert sample(registry, "model_sidecar_source_digest_info", digest="sha256:" + "b" * 64) == 1


def test_exposition_passes_promtool() -> None:
    """promtool check metrics finds nothing to lint in the pull metrics."""
    promtool = require_tool("promtool")
    registry = CollectorRegistry()
    PullMetrics(registry).set_digest("sha256:" + "c" * 64)
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=generate_latest(registry),
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
