"""Generates grafana/dashboards/forecaster-sidecar.json (one sidecar at a time) and
grafana/dashboards/forecaster-fleet.json (every sidecar that follows a SOURCE tag; its
"Fleet" row) (stdlib only).

    python grafana/dashboard.py            # rewrite the JSON
    python grafana/dashboard.py --check    # exit 1 if the committed JSON is stale
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "dashboards" / "forecaster-sidecar.json"
FLEET_OUT = Path(__file__).parent / "dashboards" / "forecaster-fleet.json"
S = 'job=~"$job", instance=~"$instance", pod=~"$pod"'
DS = {"type": "prometheus", "uid": "${datasource}"}


def target(expr: str, legend: str, ref: str = "A", instant: bool = False) -> dict[str, Any]:
    return {
        "datasource": DS,
        "expr": expr,
        "legendFormat": legend,
        "refId": ref,
        "instant": instant,
        "range": not instant,
    }


def panel(
    kind: str,
    title: str,
    description: str,
    targets: list[dict[str, Any]],
    unit: str = "short",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": extra.pop("options", {}),
        **extra,
    }


def quantiles(metric: str) -> list[dict[str, Any]]:
    return [
        target(
            f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{{S}}}"
            f"[$__rate_interval])))",
            f"p{int(q * 100)}",
            ref,
        )
        for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))
    ]


def increase_by(metric: str, label: str) -> list[dict[str, Any]]:
    return [
        target(
            f"sum by ({label}) (increase({metric}{{{S}}}[$__rate_interval]))", f"{{{{{label}}}}}"
        )
    ]


PANELS: list[dict[str, Any]] = [
    panel(
        "table",
        "Current version",
        "The version current points to, per sidecar. Two instances of one app on different "
        "versions mean a promotion or rollback did not reach every node.",
        [
            target(
                f"model_sidecar_current_version_info{{{S}}}",
                "{{instance}} {{version}}",
                instant=True,
            )
        ],
        transformations=[{"id": "labelsToFields", "options": {}}],
    ),
    panel(
        "stat",
        "Time since last successful promotion",
        "Seconds since the last promotion succeeded. Large while producers keep staging "
        "bundles means promotions are failing; check the failures panel.",
        [
            target(
                f"time() - (model_sidecar_last_success_timestamp_seconds{{{S}}} > 0)",
                "{{instance}}",
            )
        ],
        unit="s",
    ),
    panel(
        "stat",
        "Bundle staged, not yet taken",
        "1 while READY waits in staging. 1 for more than a few intervals means the sidecar "
        "cannot take the bundle (I/O errors, lock held).",
        [target(f"model_sidecar_staged_pending{{{S}}}", "{{instance}}")],
    ),
    panel(
        "stat",
        "Poll interval",
        "The resolved poll interval (flag, manifest of current, POLL_DEFAULT, 30 s).",
        [target(f"model_sidecar_poll_interval_seconds{{{S}}}", "{{instance}}")],
        unit="s",
    ),
    panel(
        "timeseries",
        "Promotions by outcome",
        "Bundles taken per interval: success, rejected (bad bundle) or error (I/O, retried). "
        "Any rejected or error is a problem for the producer or the node.",
        increase_by("model_sidecar_promotions_total", "outcome"),
    ),
    panel(
        "timeseries",
        "Promotion failures by reason",
        "Why bundles failed: a rejection reason (the producer must fix the bundle) or "
        "io_error (disk full, permissions; the sidecar retries).",
        increase_by("model_sidecar_promotion_failures_total", "reason"),
    ),
    panel(
        "timeseries",
        "Promotion latency",
        "Claim to switch, p50/p95/p99. Grows with bundle size and checksums; a jump "
        "without bigger bundles points at a slow disk.",
        quantiles("model_sidecar_promotion_duration_seconds"),
        unit="s",
    ),
    panel(
        "timeseries",
        "Reload requests by outcome",
        "HTTP requests to the model server, retries included. Failures mean the server "
        "may serve an older model than current.",
        increase_by("model_sidecar_reload_requests_total", "outcome"),
    ),
    panel(
        "timeseries",
        "Reload failures by reason",
        "Reloads that failed after their retries: connection (server down), timeout, "
        "http_status (rejected the request), verify (accepted but did not load), "
        "token (the token file is missing or invalid: nothing was sent).",
        increase_by("model_sidecar_reload_failures_total", "reason"),
    ),
    panel(
        "timeseries",
        "Reload latency",
        "A whole reload, retries and verification included, p50/p95/p99. Near "
        "RELOAD_TIMEOUT means the server is slow to load models.",
        quantiles("model_sidecar_reload_duration_seconds"),
        unit="s",
    ),
    panel(
        "timeseries",
        "Rollbacks by trigger",
        "manual (an operator ran rollback) or reload_failure (a model failed to load and "
        "the sidecar went back to the previous one).",
        increase_by("model_sidecar_rollbacks_total", "trigger"),
    ),
    panel(
        "timeseries",
        "Time since last poll",
        "Seconds since the last poll ended. Above three intervals the sidecar is stuck "
        "and /healthz fails.",
        [
            target(f"time() - model_sidecar_last_poll_timestamp_seconds{{{S}}}", "{{instance}}"),
            target(
                f"rate(model_sidecar_polls_total{{{S}}}[$__rate_interval])",
                "{{instance}} polls/s",
                "B",
            ),
        ],
        unit="s",
    ),
    panel(
        "timeseries",
        "Sidecar memory",
        "Resident memory of the sidecar. Expect about 30 MiB; steady growth is a leak.",
        [target(f"process_resident_memory_bytes{{{S}}}", "{{instance}}")],
        unit="bytes",
    ),
    panel(
        "timeseries",
        "Sidecar CPU",
        "CPU seconds per second. Near zero when idle; sustained use outside promotions is a bug.",
        [target(f"rate(process_cpu_seconds_total{{{S}}}[$__rate_interval])", "{{instance}}")],
        unit="percentunit",
    ),
    panel(
        "timeseries",
        "Scrape health",
        "up: 1 when Prometheus scrapes the sidecar. 0 means the sidecar or its node is "
        "down; nothing is promoted there.",
        [target('up{job=~"$job", instance=~"$instance"}', "{{instance}}")],
    ),
    panel(
        "table",
        "Build",
        "The sidecar release running on each instance.",
        [target(f"model_sidecar_build_info{{{S}}}", "{{instance}} {{version}}", instant=True)],
        transformations=[{"id": "labelsToFields", "options": {}}],
    ),
]


F = 'job=~"$job"'

FLEET_PANELS: list[dict[str, Any]] = [
    {
        "type": "row",
        "title": "Fleet",
        "collapsed": False,
        "datasource": DS,
        "targets": [],
        "description": "Sidecars that follow a registry tag (SOURCE): what they serve, how "
        "far behind the tag they are, what their pulls cost and why they fail.",
    },
    panel(
        "timeseries",
        "Instances per version",
        "How many sidecars serve each version (count of current_version_info). During a "
        "rollout the new version's line rises as the old one falls; two lines that stay "
        "apart for long is a split fleet (alert ModelFleetSplit).",
        [target(f"count by (version) (model_sidecar_current_version_info{{{F}}})", "{{version}}")],
    ),
    panel(
        "timeseries",
        "Instances behind the tag's digest",
        "Sidecars whose current version did not come from the digest their SOURCE tag "
        "names now (source_up_to_date == 0), against all that follow a tag. 0 when "
        "every node serves the tag.",
        [
            target(f"count(model_sidecar_source_up_to_date{{{F}}} == 0) or vector(0)", "behind"),
            target(f"count(model_sidecar_source_up_to_date{{{F}}})", "following a tag", "B"),
        ],
    ),
    panel(
        "timeseries",
        "Minutes behind the tag, last hour",
        "Per instance, how many of the last 60 minutes it served something other than "
        "the tag's digest. A node stuck at 60 does not converge: see its pull failures "
        "and promotion failures (a rejected bundle is never pulled again).",
        [
            target(
                f"sum_over_time((model_sidecar_source_up_to_date{{{F}}} == bool 0)[1h:1m])",
                "{{instance}}",
            )
        ],
        unit="m",
    ),
    panel(
        "timeseries",
        "Digest each tag names",
        "How many sidecars see each digest at their last check: while a tag moves, "
        "nodes that have not checked yet still see the old one.",
        [target(f"count by (digest) (model_sidecar_source_digest_info{{{F}}})", "{{digest}}")],
    ),
    panel(
        "timeseries",
        "Pull failures by reason",
        "Failed checks and downloads: connection (registry down or unreachable), auth "
        "(credentials), not_found (no such tag), digest_mismatch (bytes that do not match "
        "their digest: a corrupted or tampered artifact), io_error (the node's volume).",
        [
            target(
                f"sum by (reason) (increase(model_sidecar_pull_failures_total{{{F}}}"
                "[$__rate_interval]))",
                "{{reason}}",
            )
        ],
    ),
    panel(
        "timeseries",
        "Pull bytes",
        "Bytes received from the registry by the whole fleet (the registry's egress) and "
        "by the busiest instance. Layers that current already holds are not downloaded.",
        [
            target(f"sum(rate(model_sidecar_pull_bytes_total{{{F}}}[$__rate_interval]))", "fleet"),
            target(
                f"topk(1, rate(model_sidecar_pull_bytes_total{{{F}}}[$__rate_interval]))",
                "busiest: {{instance}}",
                "B",
            ),
        ],
        unit="Bps",
    ),
    panel(
        "timeseries",
        "Pulls by outcome",
        "Downloads started after the tag moved (not the checks), by outcome.",
        [
            target(
                f"sum by (outcome) (increase(model_sidecar_pulls_total{{{F}}}[$__rate_interval]))",
                "{{outcome}}",
            )
        ],
    ),
    panel(
        "timeseries",
        "Registry checks per second",
        "One HEAD request per check, per node: about nodes / SOURCE_POLL_SECONDS.",
        [
            target(
                f"sum(rate(model_sidecar_source_checks_total{{{F}}}[$__rate_interval]))", "checks/s"
            )
        ],
    ),
]


def variable(name: str, query: str, label: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": name},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
        "sort": 1,
    }


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


DATASOURCE = {
    "name": "datasource",
    "label": "Data source",
    "type": "datasource",
    "query": "prometheus",
    "current": {},
    "hide": 0,
}


def board(
    uid: str,
    title: str,
    tags: list[str],
    description: str,
    variables: list[dict[str, Any]],
    panels: list[dict[str, Any]],
) -> dict[str, Any]:
    """A dashboard with the settings both of ours share."""
    return {
        "uid": uid,
        "title": title,
        "tags": tags,
        "description": description,
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "utc",
        "templating": {"list": [DATASOURCE, *variables]},
        "annotations": {"list": []},
        "panels": panels,
    }


def dashboard() -> dict[str, Any]:
    return board(
        "forecaster-sidecar",
        "forecaster-sidecar",
        ["forecaster", "models", "sidecar"],
        "Model promotions, reloads and health of forecaster-sidecar.",
        [
            variable("job", "label_values(model_sidecar_build_info, job)", "Job"),
            variable(
                "instance",
                'label_values(model_sidecar_build_info{job=~"$job"}, instance)',
                "Instance",
            ),
            variable("pod", 'label_values(model_sidecar_build_info{job=~"$job"}, pod)', "Pod"),
        ],
        layout(PANELS),
    )


def fleet_dashboard() -> dict[str, Any]:
    return board(
        "forecaster-fleet",
        "forecaster-sidecar fleet",
        ["forecaster", "models", "sidecar", "fleet"],
        "Every sidecar following a registry tag (SOURCE): versions served, "
        "convergence on the tag, pull failures and bytes.",
        [variable("job", "label_values(model_sidecar_source_checks_total, job)", "Job")],
        fleet_layout(FLEET_PANELS),
    )


def fleet_layout(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The row across the top, then the panels two to a row."""
    out = [{**panels[0], "id": 1, "gridPos": {"x": 0, "y": 0, "w": 24, "h": 1}}]
    for i, p in enumerate(panels[1:]):
        out.append(
            {
                **p,
                "id": i + 2,
                "gridPos": {"x": 12 * (i % 2), "y": 1 + 8 * (i // 2), "w": 12, "h": 8},
            }
        )
    return out


def render(board: dict[str, Any] | None = None) -> str:
    return json.dumps(board or dashboard(), indent=2, sort_keys=True) + "\n"


OUTPUTS = ((OUT, dashboard), (FLEET_OUT, fleet_dashboard))

if __name__ == "__main__":
    if "--check" in sys.argv:
        sys.exit(0 if all(out.read_text() == render(make()) for out, make in OUTPUTS) else 1)
    for out, make in OUTPUTS:
        out.write_text(render(make()))
