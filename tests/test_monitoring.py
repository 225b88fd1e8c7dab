"""Monitoring end to end: the real sidecar scraped by Debian's Prometheus, alerts routed
by Debian's Alertmanager to a webhook receiver on 127.0.0.1, and every dashboard query
run against that Prometheus. Timings of each alert are written to the test log."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import (
    ROOT,
    ReloadServer,
    SidecarProcess,
    base_env,
    free_port,
    http_get,
    require_tool,
    serve_http,
    write_bundle,
)

SPEC_METRICS = [
    "model_sidecar_promotions_total",
    "model_sidecar_promotion_failures_total",
    "model_sidecar_promotion_duration_seconds",
    "model_sidecar_reload_requests_total",
    "model_sidecar_reload_failures_total",
    "model_sidecar_reload_duration_seconds",
    "model_sidecar_rollbacks_total",
    "model_sidecar_current_version_info",
    "model_sidecar_last_success_timestamp_seconds",
    "model_sidecar_last_poll_timestamp_seconds",
    "model_sidecar_poll_interval_seconds",
    "model_sidecar_polls_total",
    "model_sidecar_staged_pending",
    "model_sidecar_build_info",
]
DASHBOARD = ROOT / "grafana" / "dashboards" / "forecaster-sidecar.json"
RULES = ROOT / "prometheus" / "alerts.yml"
ALERT_DEADLINE = 60.0


class Webhook:
    """Alertmanager's webhook receiver: records (arrival time, alert) pairs."""

    def __init__(self) -> None:
        self.alerts: list[tuple[float, dict[str, Any]]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                for alert in body.get("alerts", []):
                    hook.alerts.append((time.monotonic(), alert))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = serve_http(Handler)

    def wait(
        self, name: str, since: float, deadline: float = ALERT_DEADLINE, **labels: str
    ) -> tuple[float, dict[str, Any]]:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            for at, alert in self.alerts:
                got = alert["labels"]
                if (
                    at >= since
                    and got.get("alertname") == name
                    and alert["status"] == "firing"
                    and all(got.get(k) == v for k, v in labels.items())
                ):
                    return at - since, alert
            time.sleep(0.1)
        raise AssertionError(f"{name} never reached the receiver; got {self.alerts}")


@dataclass
class Stack:
    models: Path
    sidecar: SidecarProcess
    reload: ReloadServer
    webhook: Webhook
    prometheus_url: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.prometheus_url}/api/v1/query?query={urllib.parse.quote(expr)}"
        status, body = http_get(url)
        answer = json.loads(body)
        assert status == 200 and answer["status"] == "success", f"{expr}: {body}"
        return list(answer["data"]["result"])

    def wait_query(self, expr: str, deadline: float = 30.0) -> list[dict[str, Any]]:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if result := self.query(expr):
                return result
            time.sleep(0.25)
        raise AssertionError(f"no data for {expr}")


def _start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    end = time.monotonic() + 30
    while time.monotonic() < end:
        assert proc.poll() is None, log.read_text()
        try:
            if http_get(url, timeout=1)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} not ready: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus = require_tool("prometheus")
    alertmanager = require_tool("prometheus-alertmanager")
    tmp = tmp_path_factory.mktemp("monitoring")
    models = tmp / "models"
    models.mkdir()
    webhook, reload = Webhook(), ReloadServer()
    env = base_env(models, RELOAD_URL=reload.url, RELOAD_RETRIES="0")
    sidecar = SidecarProcess(models, tmp / "sidecar.log", ["--poll-interval", "1"], env)
    am_port, prom_port = free_port(), free_port()
    (tmp / "am.yml").write_text(
        yaml.safe_dump(
            {
                "route": {
                    "receiver": "hook",
                    "group_by": ["alertname", "instance", "reason"],
                    "group_wait": "1s",
                    "group_interval": "1s",
                    "repeat_interval": "1h",
                },
                "receivers": [
                    {
                        "name": "hook",
                        "webhook_configs": [
                            {
                                "url": f"http://127.0.0.1:{webhook.httpd.server_port}/",
                                "send_resolved": False,
                            }
                        ],
                    }
                ],
            }
        )
    )
    (tmp / "prom.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "alerting": {
                    "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]
                },
                "scrape_configs": [
                    {
                        "job_name": "forecaster-sidecar",
                        "static_configs": [{"targets": [f"127.0.0.1:{sidecar.port}"]}],
                    }
                ],
            }
        )
    )
    procs: list[subprocess.Popen[bytes]] = []
    s = Stack(models, sidecar, reload, webhook, f"http://127.0.0.1:{prom_port}", procs)
    try:
        procs.append(
            _start(
                [
                    alertmanager,
                    f"--config.file={tmp / 'am.yml'}",
                    f"--storage.path={tmp / 'am'}",
                    f"--web.listen-address=127.0.0.1:{am_port}",
                    "--cluster.listen-address=",
                ],
                tmp / "am.log",
            )
        )
        procs.append(
            _start(
                [
                    prometheus,
                    f"--config.file={tmp / 'prom.yml'}",
                    f"--storage.tsdb.path={tmp / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                ],
                tmp / "prom.log",
            )
        )
        _wait_ready(f"http://127.0.0.1:{am_port}/-/ready", procs[0], tmp / "am.log")
        _wait_ready(f"{s.prometheus_url}/-/ready", procs[1], tmp / "prom.log")
        sidecar.wait_ready()
        s.wait_query('up{job="forecaster-sidecar"} == 1')
        yield s
    finally:
        print("alert timings (s, event to receiver):", json.dumps(s.timings))
        for proc in procs:  # only the processes this fixture started, by their pid
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if sidecar.proc.poll() is None:
            sidecar.stop()
        reload.close()
        webhook.httpd.shutdown()


def test_promotion_failure_alert_reaches_the_receiver(stack: Stack) -> None:
    """A rejected bundle fires ModelPromotionFailed at the webhook, naming instance/version."""
    write_bundle(stack.models / "staging", {"m": b"1"}, version="v1")
    stack.wait_query('model_sidecar_current_version_info{version="v1"}')
    start = time.monotonic()
    write_bundle(stack.models / "staging", {"m": b"x"}, manifest=b"{broken")
    took, alert = stack.webhook.wait("ModelPromotionFailed", start, reason="manifest_invalid")
    stack.timings["ModelPromotionFailed"] = round(took, 1)
    assert alert["labels"]["version"] == "v1"
    assert alert["labels"]["instance"] == f"127.0.0.1:{stack.sidecar.port}"
    assert "v1" in alert["annotations"]["description"]


def test_reload_failure_alert_reaches_the_receiver(stack: Stack) -> None:
    """A reload endpoint answering 500 fires ModelReloadFailing at the webhook."""
    stack.reload.default = 500
    start = time.monotonic()
    write_bundle(stack.models / "staging", {"m": b"2"}, version="v2")
    took, alert = stack.webhook.wait("ModelReloadFailing", start, reason="http_status")
    stack.timings["ModelReloadFailing"] = round(took, 1)
    assert alert["labels"]["version"] == "v2"
    stack.reload.default = 200


def _substitute(expr: str) -> str:
    for var in ("$job", "$instance", "$pod"):
        expr = expr.replace(var, ".*")
    return expr.replace("$__rate_interval", "2m")


def test_every_dashboard_query_returns_data(stack: Stack) -> None:
    """Each panel's PromQL, variables substituted, parses and returns data."""
    dashboard = json.loads(DASHBOARD.read_text())
    stack.wait_query("model_sidecar_reload_duration_seconds_count > 0")
    for p in dashboard["panels"]:
        for t in p["targets"]:
            assert stack.wait_query(_substitute(t["expr"]), deadline=10), p["title"]


def test_dashboard_variables_resolve(stack: Stack) -> None:
    """The job and instance variables find the scraped sidecar."""
    dashboard = json.loads(DASHBOARD.read_text())
    found = {}
    for var in dashboard["templating"]["list"]:
        match = re.fullmatch(r"label_values\((.*), (\w+)\)", var.get("definition", ""))
        if match:
            selector, label = match.groups()
            url = (
                f"{stack.prometheus_url}/api/v1/label/{label}/values?match[]="
                f"{urllib.parse.quote(_substitute(selector))}"
            )
            found[label] = json.loads(http_get(url)[1])["data"]
    assert found["job"] == ["forecaster-sidecar"]
    assert found["instance"] == [f"127.0.0.1:{stack.sidecar.port}"]
    assert found["pod"] == []  # no pod label outside Kubernetes; "All" matches it


def test_down_alert_reaches_the_receiver(stack: Stack) -> None:
    """Stopping the sidecar fires ModelSidecarDown (after its 1 minute 'for')."""
    start = time.monotonic()
    assert stack.sidecar.stop() == 0
    took, alert = stack.webhook.wait("ModelSidecarDown", start, deadline=120)
    stack.timings["ModelSidecarDown"] = round(took, 1)
    assert alert["labels"]["instance"] == f"127.0.0.1:{stack.sidecar.port}"


# -- static checks ----------------------------------------------------------------------


def test_dashboard_is_provisionable_and_covers_every_metric() -> None:
    """Fixed uid/title/tags, a prometheus datasource variable, every SPEC metric, a
    description on every panel, and the committed JSON equals the generator's output."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert (dashboard["uid"], dashboard["title"]) == ("forecaster-sidecar", "forecaster-sidecar")
    assert dashboard["tags"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"job", "instance", "pod"} <= set(variables)
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric in [
        *SPEC_METRICS,
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "up{",
    ]:
        assert metric in exprs, metric
    for p in dashboard["panels"]:
        assert p["description"] and p["datasource"]["uid"] == "${datasource}", p["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    generated = subprocess.run(
        ["python3", str(ROOT / "grafana" / "dashboard.py"), "--check"], check=False
    )
    assert generated.returncode == 0, "run python grafana/dashboard.py and commit the JSON"


def test_dashboard_queries_parse_with_promtool() -> None:
    """Every panel query is valid PromQL (promtool's parser, variables substituted)."""
    promtool = require_tool("promtool")
    dashboard = json.loads(DASHBOARD.read_text())
    for p in dashboard["panels"]:
        for t in p["targets"]:
            # "promtool promql format" exists only in newer releases; a rule file works
            # everywhere: check rules parses every expr.
            rule = {
                "groups": [
                    {
                        "name": "x",
                        "rules": [{"record": "dashboard:check", "expr": _substitute(t["expr"])}],
                    }
                ]
            }
            out = subprocess.run(
                [promtool, "check", "rules", "/dev/stdin"],
                input=yaml.safe_dump(rule),
                capture_output=True,
                text=True,
                check=False,
            )
            assert out.returncode == 0, f"{p['title']}: {out.stdout}{out.stderr}"


def test_alert_rules_pass_promtool_check_and_unit_tests() -> None:
    """promtool check rules and promtool test rules (every alert fires and stays quiet)."""
    promtool = require_tool("promtool")
    check = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yml"],
        cwd=RULES.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert test.returncode == 0, test.stdout + test.stderr


def test_every_alert_has_a_unit_test_and_a_runbook_entry() -> None:
    """Each alert appears in alerts_test.yml and has a section in docs/runbook.md."""
    rules = yaml.safe_load(RULES.read_text())
    names = [r["alert"] for g in rules["groups"] for r in g["rules"]]
    tests = (RULES.parent / "alerts_test.yml").read_text()
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    for name in names:
        assert f"alertname: {name}" in tests, name
        assert f"## {name}" in runbook, name
        rule = next(r for g in rules["groups"] for r in g["rules"] if r["alert"] == name)
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"])


def test_runbook_urls_open_the_alerts_section() -> None:
    """Each runbook_url is a URL from the one documented base, anchored at the alert's
    section of docs/runbook.md (a repository path would not open from a notification)."""
    sys.path.insert(0, str(ROOT / "prometheus"))
    from prometheusrule import RUNBOOK_BASE, runbook_url

    rules = yaml.safe_load(RULES.read_text())
    headings = re.findall(r"^## (\S+)$", (ROOT / "docs" / "runbook.md").read_text(), re.M)
    for rule in (r for g in rules["groups"] for r in g["rules"]):
        assert rule["annotations"]["runbook_url"] == runbook_url(RUNBOOK_BASE, rule["alert"])
        assert rule["alert"] in headings


def test_prometheusrule_carries_the_same_rules() -> None:
    """k8s/monitoring/prometheusrule.yaml holds exactly the groups of prometheus/alerts.yml."""
    source = yaml.safe_load(RULES.read_text())
    crd = yaml.safe_load((ROOT / "k8s" / "monitoring" / "prometheusrule.yaml").read_text())
    assert crd["kind"] == "PrometheusRule"
    assert crd["spec"]["groups"] == source["groups"]
