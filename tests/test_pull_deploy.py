"""k8s/fleet: both rings render with kustomize, validate against Kubernetes 1.32, and wire
the SPEC 12 variables to the files mounted from the Secret and the ConfigMap."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from service import signing
from service.oci.reference import parse_reference
from tests.support import ROOT, require_tool

FLEET = ROOT / "k8s" / "fleet"
RINGS = {"stable": FLEET, "canary": FLEET / "canary"}
FLEET_VARIABLES = {"SOURCE", "SOURCE_POLL_SECONDS", "REGISTRY_AUTH_FILE", "TRUSTED_KEYS_FILE"}


def render(ring: str) -> list[dict[str, Any]]:
    kubectl = require_tool("kubectl")
    out = subprocess.run(
        [kubectl, "kustomize", str(RINGS[ring])], capture_output=True, text=True, check=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(docs: list[dict[str, Any]], kind: str, prefix: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(prefix))


def sidecar(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec = find(docs, "DaemonSet", "forecaster")["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] if c["name"] == "sidecar")


def mounted_file(docs: list[dict[str, Any]], path: str) -> tuple[dict[str, Any], str]:
    """The pod volume and the key within it that a file path of the sidecar comes from."""
    spec = find(docs, "DaemonSet", "forecaster")["spec"]["template"]["spec"]
    directory, name = path.rsplit("/", 1)
    mount = next(m for m in sidecar(docs)["volumeMounts"] if m["mountPath"] == directory)
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    source = volume.get("secret") or volume.get("configMap") or {}
    items = {i["path"]: i["key"] for i in source.get("items", [])}
    return volume, items.get(name, name)


@pytest.mark.parametrize("ring", sorted(RINGS))
def test_ring_validates_strictly(ring: str, tmp_path: Path) -> None:
    """kubernetes-validate --strict accepts every object of the ring."""
    validate = require_tool("kubernetes-validate")
    rendered = tmp_path / "fleet.yaml"
    rendered.write_text(yaml.safe_dump_all(render(ring)))
    result = subprocess.run(
        [validate, "--strict", "-k", "1.32.0", str(rendered)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("ring", sorted(RINGS))
def test_ring_follows_its_tag(ring: str) -> None:
    """Each ring's SOURCE is a valid reference to the tag named like the ring."""
    docs = render(ring)
    data = find(docs, "ConfigMap", "forecaster-sidecar-fleet")["data"]
    assert set(data) >= FLEET_VARIABLES
    assert parse_reference(data["SOURCE"]).tag == ring
    assert 5 <= int(data["SOURCE_POLL_SECONDS"]) <= 86400


def test_rings_select_disjoint_nodes() -> None:
    """Stable runs where the ring label is NOT canary, canary where it is; selectors differ."""
    terms = {}
    for ring in RINGS:
        ds = find(render(ring), "DaemonSet", "forecaster")
        affinity = ds["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
        (term,) = affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        terms[ring] = term["matchExpressions"][0]
        assert ds["spec"]["selector"]["matchLabels"]["ring"] == ring
    assert terms["stable"]["operator"] == "NotIn" and terms["canary"]["operator"] == "In"
    assert terms["stable"]["values"] == terms["canary"]["values"] == ["canary"]


@pytest.mark.parametrize("ring", sorted(RINGS))
def test_registry_auth_file_is_the_docker_config_secret(ring: str) -> None:
    """REGISTRY_AUTH_FILE is the .dockerconfigjson key of a docker-registry Secret."""
    docs = render(ring)
    data = find(docs, "ConfigMap", "forecaster-sidecar-fleet")["data"]
    volume, key = mounted_file(docs, data["REGISTRY_AUTH_FILE"])
    assert volume["secret"]["secretName"] == "forecaster-registry"
    assert key == ".dockerconfigjson"


@pytest.mark.parametrize("ring", sorted(RINGS))
def test_trusted_keys_file_is_mounted_and_loads(ring: str, tmp_path: Path) -> None:
    """TRUSTED_KEYS_FILE comes from the keys ConfigMap, whose PEM loads as Ed25519 keys."""
    docs = render(ring)
    data = find(docs, "ConfigMap", "forecaster-sidecar-fleet")["data"]
    volume, key = mounted_file(docs, data["TRUSTED_KEYS_FILE"])
    keys = find(docs, "ConfigMap", volume["configMap"]["name"])["data"][key]
    (tmp_path / "trusted.pem").write_text(keys)
    assert len(signing.load_trusted_keys(tmp_path / "trusted.pem").keys) == 1


def test_sidecar_is_hardened_and_bounded() -> None:
    """The fleet sidecar keeps the hardened context and has memory limits."""
    container = sidecar(render("stable"))
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] and not context["allowPrivilegeEscalation"]
    assert context["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["limits"]["memory"]
