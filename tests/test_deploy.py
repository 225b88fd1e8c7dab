"""Deployment artifacts: the Dockerfile lints clean, the manifests validate against the
real Kubernetes 1.32 schemas, and the sidecar container matches SPEC."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import ROOT, require_tool

K8S = ROOT / "k8s"
SPEC_VARIABLES = {
    "MODELS_ROOT",
    "STAGING_DIR",
    "CURRENT_LINK",
    "MANIFEST_NAME",
    "REQUIRE_MANIFEST",
    "POLL_DEFAULT",
    "RELOAD_URL",
    "RELOAD_METHOD",
    "RELOAD_TIMEOUT",
    "RELOAD_RETRIES",
    "RELOAD_TOKEN",
    "RELOAD_TOKEN_FILE",
    "RELOAD_VERIFY_URL",
    "ROLLBACK_ON_RELOAD_FAILURE",
    "KEEP_VERSIONS",
    "KEEP_REJECTED",
    "METRICS_ADDR",
    "METRICS_PORT",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "WATCH",
}


def objects(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(kind: str) -> dict[str, Any]:
    return next(o for o in objects(K8S / "forecaster-sidecar.yaml") if o["kind"] == kind)


def container(name: str) -> dict[str, Any]:
    spec = by_kind("Deployment")["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] if c["name"] == name)


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "examples/forecaster_app/Dockerfile"])
def test_dockerfile_is_hadolint_clean(dockerfile: str) -> None:
    """hadolint reports nothing on the sidecar's and the example app's Dockerfiles."""
    hadolint = require_tool("hadolint")
    out = subprocess.run(
        [hadolint, str(ROOT / dockerfile)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_contract() -> None:
    """Base image by ARG, non-root user, the sidecar as ENTRYPOINT, /sidecar/sidecar.sh."""
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=", text, re.M)
    assert re.search(r"^USER 10001", text, re.M)
    assert 'ENTRYPOINT ["/opt/venv/bin/forecaster-sidecar"]' in text
    assert "/sidecar/sidecar.sh" in text
    assert "org.opencontainers.image.title" in text


@pytest.mark.parametrize("source", ["file", "kustomize"])
def test_manifests_validate_strictly(source: str, tmp_path: Path) -> None:
    """kubernetes-validate --strict accepts every object (file alone, and kustomize -k)."""
    validate = require_tool("kubernetes-validate")
    path = K8S / "forecaster-sidecar.yaml"
    if source == "kustomize":
        kubectl = require_tool("kubectl")
        rendered = subprocess.run(
            [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, check=True
        ).stdout
        path = tmp_path / "rendered.yaml"
        path.write_text(rendered)
    out = subprocess.run(
        [validate, "--strict", "-k", "1.32.0", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "passed for resource deployment/forecaster" in out.stdout + out.stderr


def test_sidecar_container_matches_spec() -> None:
    """Env names come from SPEC, the metrics port is 9177, probes use /healthz and /readyz."""
    sidecar = container("sidecar")
    config = by_kind("ConfigMap")["data"]
    assert set(config) <= SPEC_VARIABLES
    assert sidecar["envFrom"] == [
        {"configMapRef": {"name": by_kind("ConfigMap")["metadata"]["name"]}}
    ]
    assert sidecar["ports"] == [{"name": "metrics", "containerPort": int(config["METRICS_PORT"])}]
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert sidecar["image"] == "forecaster-sidecar:latest"
    assert sidecar["imagePullPolicy"] == "IfNotPresent"
    assert "command" not in sidecar  # the image's ENTRYPOINT is the sidecar
    mounts = {m["name"]: m["mountPath"] for m in sidecar["volumeMounts"]}
    assert mounts["models"] == config["MODELS_ROOT"] == "/models"
    assert config["RELOAD_TOKEN_FILE"].startswith(mounts["reload-token"] + "/")


def test_security_context_is_hardened() -> None:
    """Non-root, read-only root, no privilege escalation, all capabilities dropped, seccomp."""
    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in pod["containers"]:
        ctx = c["securityContext"]
        assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"]["drop"] == ["ALL"]
        assert "add" not in ctx["capabilities"]
    assert container("sidecar")["resources"]["limits"]["memory"]


def test_reload_token_secret_is_required() -> None:
    """The token Secret is not optional: no pod runs without the file both containers read."""
    volumes = by_kind("Deployment")["spec"]["template"]["spec"]["volumes"]
    token = next(v for v in volumes if v["name"] == "reload-token")
    assert token["secret"]["optional"] is False
    assert by_kind("ConfigMap")["data"]["RELOAD_TOKEN_FILE"].startswith(
        next(
            m["mountPath"]
            for m in container("forecaster")["volumeMounts"]
            if m["name"] == "reload-token"
        )
        + "/"
    )


def test_grace_period_fits_the_stop_bound() -> None:
    """The grace period is above the sidecar's 5 s stop bound (SPEC 9) and at most
    podman's fixed 10 s stop timeout, which the pod test proves."""
    assert (
        5 < by_kind("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] <= 10
    )


def test_seed_shape_is_kept() -> None:
    """The app forecaster:latest on 8000 and hostPath /var/lib/forecaster-models at /models."""
    app = container("forecaster")
    assert app["image"] == "forecaster:latest"
    assert app["ports"][0]["containerPort"] == 8000
    volumes = by_kind("Deployment")["spec"]["template"]["spec"]["volumes"]
    models = next(v for v in volumes if v["name"] == "models")
    assert models["hostPath"]["path"] == "/var/lib/forecaster-models"
    annotations = by_kind("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "9177"


def test_prometheusrule_rules_pass_promtool(tmp_path: Path) -> None:
    """The rules inside the PrometheusRule pass promtool check rules."""
    promtool = require_tool("promtool")
    crd = objects(K8S / "monitoring" / "prometheusrule.yaml")[0]
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": crd["spec"]["groups"]}))
    out = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_servicemonitor_selects_the_metrics_service() -> None:
    """The ServiceMonitor's selector and port match the Service."""
    monitor = objects(K8S / "monitoring" / "servicemonitor.yaml")[0]
    service = by_kind("Service")
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert service["metadata"]["name"].startswith("forecaster-sidecar")


def test_mlserver_overlay_renders_and_validates(tmp_path: Path) -> None:
    """The MLServer overlay renders with kustomize, validates, and points the reload at
    the KServe V2 load endpoint with verification and rollback."""
    kubectl = require_tool("kubectl")
    validate = require_tool("kubernetes-validate")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(ROOT / "examples" / "mlserver" / "k8s")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = tmp_path / "mlserver.yaml"
    path.write_text(rendered)
    out = subprocess.run(
        [validate, "--strict", "-k", "1.32.0", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    docs = {d["kind"]: d for d in yaml.safe_load_all(rendered) if d}
    data = docs["ConfigMap"]["data"]
    assert data["RELOAD_URL"].endswith("/v2/repository/models/forecaster/load")
    assert "{version}" in data["RELOAD_VERIFY_URL"]
    assert data["ROLLBACK_ON_RELOAD_FAILURE"] == "true"
    assert "RELOAD_TOKEN_FILE" not in data
    app = next(
        c
        for c in docs["Deployment"]["spec"]["template"]["spec"]["containers"]
        if c["name"] == "forecaster"
    )
    assert app["command"] == ["mlserver", "start", "/models/current"]


def test_cluster_test_kustomization_renders_and_validates(tmp_path: Path) -> None:
    """What tests/test_e2e_k3s.py applies renders offline with its edits and validates."""
    from test_e2e_k3s import kustomization

    kubectl = require_tool("kubectl")
    validate = require_tool("kubernetes-validate")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(kustomization(tmp_path, "ns-e2e", "t"))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (tmp_path / "rendered.yaml").write_text(rendered)
    out = subprocess.run(
        [validate, "--strict", "-k", "1.32.0", str(tmp_path / "rendered.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    docs = {d["kind"]: d for d in yaml.safe_load_all(rendered) if d}
    assert {d["metadata"]["namespace"] for d in docs.values()} == {"ns-e2e"}
    assert docs["ConfigMap"]["data"]["ROLLBACK_ON_RELOAD_FAILURE"] == "true"
    assert set(docs["Secret"]["data"]) == {"token", "app-token"}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    app = next(c for c in pod["containers"] if c["name"] == "forecaster")
    assert [e["value"] for e in app["env"] if e["name"] == "RELOAD_TOKEN_FILE"] == [
        "/var/run/secrets/forecaster/app-token"
    ]
    models = next(v for v in pod["volumes"] if v["name"] == "models")
    assert models["hostPath"]["path"] == "/var/lib/ns-e2e"
