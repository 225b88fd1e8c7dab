"""End to end on a real cluster (k3s): `uv run pytest -m e2e_k3s`.

Uses the cluster of the current kubeconfig and the image forecaster-sidecar:latest
already imported into it (`podman save forecaster-sidecar:latest -o fs.tar &&
sudo k3s ctr images import fs.tar`). It deploys k8s/forecaster-sidecar.yaml into a
temporary namespace, with the example app (from a ConfigMap, run by the sidecar image's
Python) as the forecaster and a hostPath of its own, stages a bundle inside the pod,
waits for the promotion, checks that /predict answers with the new version and that
the sidecar's metrics count it, then deletes everything it created. Without a reachable
cluster it is skipped and says why (no Kubernetes can run on the CI machines).
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from conftest import ROOT

pytestmark = pytest.mark.e2e_k3s
KUBECTL = shutil.which("kubectl")


def kubectl(*args: str, stdin: str | None = None, check: bool = True) -> str:
    assert KUBECTL is not None
    out = subprocess.run([KUBECTL, *args], input=stdin, capture_output=True, text=True,
                         timeout=120, check=False)
    if check and out.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {out.stderr}")
    return out.stdout


def cluster_reachable() -> str | None:
    if KUBECTL is None:
        return "kubectl is not installed"
    probe = subprocess.run([KUBECTL, "get", "--raw", "/readyz", "--request-timeout=5s"],
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"no reachable cluster in the current kubeconfig ({probe.stderr.strip()[:200]})"
    return None


def manifests(namespace: str, host_path: str) -> str:
    docs = [d for d in yaml.safe_load_all((ROOT / "k8s" / "forecaster-sidecar.yaml").read_text())
            if d]
    app_code = (ROOT / "examples" / "forecaster_app" / "app.py").read_text()
    docs.append({"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": "forecaster-example-app"}, "data": {"app.py": app_code}})
    docs.append({"apiVersion": "v1", "kind": "Secret",
                 "metadata": {"name": "forecaster-reload-token"},
                 "stringData": {"token": secrets.token_hex(16)}})
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
        if doc["kind"] == "Deployment":
            pod = doc["spec"]["template"]["spec"]
            app = next(c for c in pod["containers"] if c["name"] == "forecaster")
            app.update(image="forecaster-sidecar:latest",
                       command=["/opt/venv/bin/python", "/app/app.py"])
            app["volumeMounts"].append({"name": "app", "mountPath": "/app", "readOnly": True})
            pod["volumes"].append({"name": "app", "configMap": {"name": "forecaster-example-app"}})
            next(v for v in pod["volumes"] if v["name"] == "models")["hostPath"]["path"] = host_path
    return yaml.safe_dump_all(docs)


@pytest.fixture
def deployed() -> Iterator[tuple[str, str]]:
    reason = cluster_reachable()
    if reason:
        pytest.skip(reason)
    namespace = f"forecaster-e2e-{secrets.token_hex(3)}"
    kubectl("create", "namespace", namespace)
    try:
        kubectl("apply", "-f", "-", stdin=manifests(namespace, f"/var/lib/{namespace}"))
        kubectl("-n", namespace, "rollout", "status", "deploy/forecaster", "--timeout=180s")
        pod = kubectl("-n", namespace, "get", "pod", "-l", "app=forecaster", "-o",
                      "jsonpath={.items[0].metadata.name}")
        yield namespace, pod
    finally:
        kubectl("-n", namespace, "exec", "deploy/forecaster", "-c", "sidecar", "--", "sh", "-c",
                "rm -rf /models/* /models/.sidecar", check=False)
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def in_pod(namespace: str, pod: str, code: str) -> Any:
    out = kubectl("-n", namespace, "exec", pod, "-c", "sidecar", "--",
                  "/opt/venv/bin/python", "-c", code)
    return json.loads(out)


def test_promotion_reaches_the_app_and_the_metrics(deployed: tuple[str, str]) -> None:
    """A bundle staged in the pod's volume is promoted; /predict answers from it."""
    namespace, pod = deployed
    in_pod(namespace, pod, (
        "import json, os, pathlib; b = pathlib.Path('/models/.e2e-bundle'); b.mkdir();"
        "(b / 'model.json').write_text(json.dumps({'slope': 4.0, 'intercept': 0.0}));"
        "print(json.dumps(True))"))
    kubectl("-n", namespace, "exec", pod, "-c", "sidecar", "--", "forecaster-sidecar", "stage",
            "/models/.e2e-bundle", "--version", "e2e-v1")
    predict = ("import json, urllib.request;"
               "print(urllib.request.urlopen('http://127.0.0.1:8000/predict?x=2').read().decode())")
    deadline = time.monotonic() + 120
    answer: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            answer = in_pod(namespace, pod, predict)
            if answer.get("version") == "e2e-v1":
                break
        except AssertionError:
            pass
        time.sleep(2)
    assert answer.get("version") == "e2e-v1" and answer["prediction"] == 8.0
    metrics = kubectl("-n", namespace, "exec", pod, "-c", "sidecar", "--", "/opt/venv/bin/python",
                      "-c", "import urllib.request;print(urllib.request.urlopen("
                      "'http://127.0.0.1:9177/metrics').read().decode())")
    assert 'model_sidecar_promotions_total{outcome="success"} 1.0' in metrics
    assert 'model_sidecar_current_version_info{version="e2e-v1"} 1.0' in metrics
