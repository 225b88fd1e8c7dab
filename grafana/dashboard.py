"""Generates grafana/dashboards/forecaster-sidecar.json (stdlib only).

    python grafana/dashboard.py            # rewrite the JSON
    python grafana/dashboard.py --check    # exit 1 if the committed JSON is stale
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "dashboards" / "forecaster-sidecar.json"
S = 'job=~"$job", instance=~"$instance", pod=~"$pod"'
DS = {"type": "prometheus", "uid": "${datasource}"}


def target(expr: str, legend: str, ref: str = "A", instant: bool = False) -> dict[str, Any]:
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref,
            "instant": instant, "range": not instant}


def panel(kind: str, title: str, description: str, targets: list[dict[str, Any]],
          unit: str = "short", **extra: Any) -> dict[str, Any]:
    return {"type": kind, "title": title, "description": description, "datasource": DS,
            "targets": targets, "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": extra.pop("options", {}), **extra}


def quantiles(metric: str) -> list[dict[str, Any]]:
    return [target(f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{{S}}}"
                   f"[$__rate_interval])))", f"p{int(q * 100)}", ref)
            for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))]


def increase_by(metric: str, label: str) -> list[dict[str, Any]]:
    return [target(f"sum by ({label}) (increase({metric}{{{S}}}[$__rate_interval]))",
                   f"{{{{{label}}}}}")]


PANELS: list[dict[str, Any]] = [
    panel("table", "Current version",
          "The version current points to, per sidecar. Two instances of one app on different "
          "versions mean a promotion or rollback did not reach every node.",
          [target(f"model_sidecar_current_version_info{{{S}}}", "{{instance}} {{version}}",
                  instant=True)],
          transformations=[{"id": "labelsToFields", "options": {}}]),
    panel("stat", "Time since last successful promotion",
          "Seconds since the last promotion succeeded. Large while producers keep staging "
          "bundles means promotions are failing; check the failures panel.",
          [target(f"time() - (model_sidecar_last_success_timestamp_seconds{{{S}}} > 0)",
                  "{{instance}}")], unit="s"),
    panel("stat", "Bundle staged, not yet taken",
          "1 while READY waits in staging. 1 for more than a few intervals means the sidecar "
          "cannot take the bundle (I/O errors, lock held).",
          [target(f"model_sidecar_staged_pending{{{S}}}", "{{instance}}")]),
    panel("stat", "Poll interval",
          "The resolved poll interval (flag, manifest of current, POLL_DEFAULT, 30 s).",
          [target(f"model_sidecar_poll_interval_seconds{{{S}}}", "{{instance}}")], unit="s"),
    panel("timeseries", "Promotions by outcome",
          "Bundles taken per interval: success, rejected (bad bundle) or error (I/O, retried). "
          "Any rejected or error is a problem for the producer or the node.",
          increase_by("model_sidecar_promotions_total", "outcome")),
    panel("timeseries", "Promotion failures by reason",
          "Why bundles failed: a rejection reason (the producer must fix the bundle) or "
          "io_error (disk full, permissions; the sidecar retries).",
          increase_by("model_sidecar_promotion_failures_total", "reason")),
    panel("timeseries", "Promotion latency",
          "Claim to switch, p50/p95/p99. Grows with bundle size and checksums; a jump "
          "without bigger bundles points at a slow disk.",
          quantiles("model_sidecar_promotion_duration_seconds"), unit="s"),
    panel("timeseries", "Reload requests by outcome",
          "HTTP requests to the model server, retries included. Failures mean the server "
          "may serve an older model than current.",
          increase_by("model_sidecar_reload_requests_total", "outcome")),
    panel("timeseries", "Reload failures by reason",
          "Reloads that failed after their retries: connection (server down), timeout, "
          "http_status (rejected the request), verify (accepted but did not load), "
          "token (the token file is missing or invalid: nothing was sent).",
          increase_by("model_sidecar_reload_failures_total", "reason")),
    panel("timeseries", "Reload latency",
          "A whole reload, retries and verification included, p50/p95/p99. Near "
          "RELOAD_TIMEOUT means the server is slow to load models.",
          quantiles("model_sidecar_reload_duration_seconds"), unit="s"),
    panel("timeseries", "Rollbacks by trigger",
          "manual (an operator ran rollback) or reload_failure (a model failed to load and "
          "the sidecar went back to the previous one).",
          increase_by("model_sidecar_rollbacks_total", "trigger")),
    panel("timeseries", "Time since last poll",
          "Seconds since the last poll ended. Above three intervals the sidecar is stuck "
          "and /healthz fails.",
          [target(f"time() - model_sidecar_last_poll_timestamp_seconds{{{S}}}",
                  "{{instance}}"),
           target(f"rate(model_sidecar_polls_total{{{S}}}[$__rate_interval])",
                  "{{instance}} polls/s", "B")], unit="s"),
    panel("timeseries", "Sidecar memory",
          "Resident memory of the sidecar. Expect about 30 MiB; steady growth is a leak.",
          [target(f"process_resident_memory_bytes{{{S}}}", "{{instance}}")], unit="bytes"),
    panel("timeseries", "Sidecar CPU",
          "CPU seconds per second. Near zero when idle; sustained use outside promotions "
          "is a bug.",
          [target(f"rate(process_cpu_seconds_total{{{S}}}[$__rate_interval])",
                  "{{instance}}")], unit="percentunit"),
    panel("timeseries", "Scrape health",
          "up: 1 when Prometheus scrapes the sidecar. 0 means the sidecar or its node is "
          "down; nothing is promoted there.",
          [target('up{job=~"$job", instance=~"$instance"}', "{{instance}}")]),
    panel("table", "Build",
          "The sidecar release running on each instance.",
          [target(f"model_sidecar_build_info{{{S}}}", "{{instance}} {{version}}",
                  instant=True)],
          transformations=[{"id": "labelsToFields", "options": {}}]),
]


def variable(name: str, query: str, label: str) -> dict[str, Any]:
    return {"name": name, "label": label, "type": "query", "datasource": DS,
            "query": {"query": query, "refId": name}, "definition": query, "refresh": 2,
            "includeAll": True, "multi": True, "allValue": ".*",
            "current": {"text": "All", "value": "$__all"}, "sort": 1}


def layout(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stat panels four to a row at the top, the rest two to a row."""
    out, x, y = [], 0, 0
    for i, p in enumerate(panels):
        w, h = (6, 5) if p["type"] == "stat" else (12, 8)
        if x + w > 24:
            x, y = 0, y + h
        out.append({**p, "id": i + 1, "gridPos": {"x": x, "y": y, "w": w, "h": h}})
        x += w
    return out


def dashboard() -> dict[str, Any]:
    return {
        "uid": "forecaster-sidecar",
        "title": "forecaster-sidecar",
        "tags": ["forecaster", "models", "sidecar"],
        "description": "Model promotions, reloads and health of forecaster-sidecar.",
        "editable": True, "graphTooltip": 1, "schemaVersion": 39, "version": 1,
        "refresh": "30s", "time": {"from": "now-6h", "to": "now"},
        "timezone": "utc",
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource",
             "query": "prometheus", "current": {}, "hide": 0},
            variable("job", "label_values(model_sidecar_build_info, job)", "Job"),
            variable("instance", 'label_values(model_sidecar_build_info{job=~"$job"}, instance)',
                     "Instance"),
            variable("pod", 'label_values(model_sidecar_build_info{job=~"$job"}, pod)', "Pod"),
        ]},
        "annotations": {"list": []},
        "panels": layout(PANELS),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    if "--check" in sys.argv:
        sys.exit(0 if OUT.read_text() == render() else 1)
    OUT.write_text(render())
