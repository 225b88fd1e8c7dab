"""The scenario of the shipped manifest run as a pod, shared by tests/test_pod.py (podman
kube play) and tests/test_e2e_k3s.py (a real cluster).

The manifest is always read from k8s/forecaster-sidecar.yaml and changed by the named
edits below, in code; never from a second copy. An edit is a list of JSON-patch operations
(RFC 6902) on one object, so the cluster test hands the same edits to kustomize and the
pod test applies them itself (``apply_edit``).

A ``Pod`` is how the scenario reaches the running pod: podman or kubectl behind it.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from tests.support import ROOT, parse_metrics

MANIFEST = ROOT / "k8s" / "forecaster-sidecar.yaml"
UID = 10001
TOKEN_DIR = "/var/run/secrets/forecaster"
SECRET = "forecaster-reload-token"
Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def shipped() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]


def find(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind)


def container_index(name: str) -> int:
    pod = find(shipped(), "Deployment")["spec"]["template"]["spec"]
    return next(i for i, c in enumerate(pod["containers"]) if c["name"] == name)


# -- edits --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Edit:
    name: str
    reason: str
    kind: str
    ops: list[dict[str, Any]]


def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]


def apply_edit(docs: list[dict[str, Any]], edit: Edit) -> None:
    """JSON-patch add/replace/remove on the one object of the edit's kind."""
    doc = find(docs, edit.kind)
    for op in edit.ops:
        *parents, last = _pointer(op["path"])
        node: Any = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            index = len(node) if last == "-" else int(last)
            if op["op"] == "add":
                node.insert(index, op["value"])
            elif op["op"] == "replace":
                node[index] = op["value"]
            else:
                del node[index]
        elif op["op"] in ("add", "replace"):
            assert op["op"] == "add" or last in node, f"{edit.name}: no {op['path']}"
            node[last] = op["value"]
        else:
            del node[last]


def scenario_edits() -> list[Edit]:
    """What the scenario sets through the manifest's own knobs (cluster and pod alike)."""
    app = container_index("forecaster")
    env = next(
        i
        for i, e in enumerate(
            find(shipped(), "Deployment")["spec"]["template"]["spec"]["containers"][app]["env"]
        )
        if e["name"] == "RELOAD_TOKEN_FILE"
    )
    return [
        Edit(
            "rollback-on",
            "the scenario's broken bundle must be rolled back: "
            "ROLLBACK_ON_RELOAD_FAILURE=true through the ConfigMap, as a user sets it",
            "ConfigMap",
            [{"op": "replace", "path": "/data/ROLLBACK_ON_RELOAD_FAILURE", "value": "true"}],
        ),
        Edit(
            "app-token-key",
            "the example app reads its own key of the Secret: in the shipped manifest both "
            "containers read one file, so no change of the Secret could give the sidecar a "
            "token the app rejects",
            "Deployment",
            [
                {
                    "op": "replace",
                    "path": f"/spec/template/spec/containers/{app}/env/{env}/value",
                    "value": f"{TOKEN_DIR}/app-token",
                }
            ],
        ),
    ]


def secret(token: str) -> dict[str, Any]:
    """The Secret a user creates with kubectl (the manifest ships none), plus the app's key.
    Base64 ``data`` as kubectl writes it (podman 4.3 mounts nothing from ``stringData``)."""
    value = base64.b64encode(token.encode()).decode()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET},
        "type": "Opaque",
        "data": {"token": value, "app-token": value},
    }


# -- the pod, as the scenario sees it -----------------------------------------------------


class Pod(Protocol):
    def stage(self, files: dict[str, bytes], version: str) -> None: ...
    def current(self) -> str: ...
    def app_get(self, path: str) -> tuple[int, str]: ...
    def sidecar_get(self, path: str) -> tuple[int, str]: ...
    def exec(self, container: str, *argv: str) -> str: ...
    def set_sidecar_token(self, token: str) -> None: ...
    def logs(self, container: str) -> str: ...


def wait_for(
    what: str, probe: Callable[[], Any], deadline: float = 60.0, pause: float = 0.2
) -> Any:
    """The first truthy value of probe() within the deadline; an OSError counts as no."""
    end = time.monotonic() + deadline
    last: Any = None
    while time.monotonic() < end:
        try:
            last = probe()
        except OSError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(pause)
    raise AssertionError(f"timed out after {deadline} s waiting for {what} (last: {last!r})")


def metrics(pod: Pod) -> Metrics:
    status, text = pod.sidecar_get("/metrics")
    assert status == 200, f"/metrics answered {status}"
    return parse_metrics(text)


def metric(pod: Pod, name: str, **labels: str) -> float:
    return metrics(pod).get((name, tuple(sorted(labels.items()))), 0.0)


def prediction(pod: Pod, x: float = 2.0) -> dict[str, Any]:
    status, body = pod.app_get(f"/predict?x={x}")
    return dict(json.loads(body)) if status == 200 else {}


def model(slope: float, intercept: float = 0.0) -> dict[str, bytes]:
    return {"model.json": json.dumps({"slope": slope, "intercept": intercept}).encode()}


@dataclass
class Timings:
    seconds: dict[str, float]

    def lap(self, name: str, since: float) -> None:
        self.seconds[name] = round(time.monotonic() - since, 2)


def promote_v1(pod: Pod, timings: Timings) -> None:
    """Stage v1: current switches, the app reloads (token from the Secret) and serves it."""
    start = time.monotonic()
    pod.stage(model(2.0), "v1")
    wait_for("current -> versions/v1", lambda: pod.current() == "versions/v1")
    answer = wait_for(
        "the app to serve v1", lambda: prediction(pod).get("version") == "v1" and prediction(pod)
    )
    timings.lap("first promotion (stage -> app serves v1)", start)
    assert answer["prediction"] == 4.0
    wait_for(
        "reload success counted",
        lambda: metric(pod, "model_sidecar_reload_requests_total", outcome="success") >= 1,
    )
    seen = metrics(pod)
    assert seen[("model_sidecar_promotions_total", (("outcome", "success"),))] == 1
    assert seen[("model_sidecar_current_version_info", (("version", "v1"),))] == 1
    assert seen[("model_sidecar_reload_failures_total", (("reason", "http_status"),))] == 0


def broken_bundle_is_rolled_back(pod: Pod, timings: Timings) -> None:
    """v2 is served; a bundle the app cannot load is rolled back to v2 and counted."""
    pod.stage(model(3.0), "v2")
    wait_for("the app to serve v2", lambda: prediction(pod).get("version") == "v2")
    start = time.monotonic()
    pod.stage({"model.json": b"this is not a model"}, "v3-broken")
    wait_for(
        "the rollback to be counted",
        lambda: metric(pod, "model_sidecar_rollbacks_total", trigger="reload_failure") == 1,
        deadline=90,
    )
    wait_for("current back at v2", lambda: pod.current() == "versions/v2")
    timings.lap("rollback (broken staged -> rollback counted)", start)
    assert prediction(pod) == {"version": "v2", "prediction": 6.0}
    assert metric(pod, "model_sidecar_reload_failures_total", reason="http_status") >= 1
    assert metric(pod, "model_sidecar_current_version_info", version="v2") == 1


def wrong_token_is_refused(pod: Pod) -> None:
    """A wrong token in the sidecar's Secret key: reloads fail with 401, counted; the app
    keeps serving v2."""
    before = metric(pod, "model_sidecar_reload_failures_total", reason="http_status")
    pod.set_sidecar_token("wrong-" + "0" * 26)
    pod.stage(model(5.0), "v4")
    wait_for(
        "the refused reload to be counted",
        lambda: metric(pod, "model_sidecar_reload_failures_total", reason="http_status") > before,
        deadline=90,
    )
    wait_for("the 401 in the sidecar's log", lambda: "HTTP 401" in pod.logs("sidecar"))
    assert prediction(pod) == {"version": "v2", "prediction": 6.0}


def probes_answer_inside_the_pod(pod: Pod) -> None:
    """/healthz and /readyz answer 200 on the pod's loopback, asked from the app container."""
    port = find(shipped(), "ConfigMap")["data"]["METRICS_PORT"]
    code = (
        "import sys, urllib.request as u; print(*(u.urlopen("
        f"'http://127.0.0.1:{port}' + p, timeout=5).status for p in sys.argv[1:]))"
    )
    out = pod.exec("forecaster", "python3", "-c", code, "/healthz", "/readyz")
    assert out.split() == ["200", "200"]


def status_fields(status: str) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)


def sidecar_is_confined(pod: Pod) -> None:
    """The sidecar's PID 1 runs as 10001 with no capabilities, no new privileges, and a
    read-only root filesystem."""
    fields = status_fields(pod.exec("sidecar", "cat", "/proc/1/status"))
    assert fields["Uid"].split() == [str(UID)] * 4 and fields["Gid"].split() == [str(UID)] * 4
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(fields[cap], 16) == 0, f"{cap} = {fields[cap]}"
    assert fields["NoNewPrivs"].strip() == "1"
    root = [
        line.split()
        for line in pod.exec("sidecar", "cat", "/proc/1/mounts").splitlines()
        if line.split()[1] == "/"
    ]
    assert root and "ro" in root[-1][3].split(","), root
    out = pod.exec("sidecar", "sh", "-c", "touch /probe-write 2>&1; echo $?")
    assert "Read-only file system" in out


def hostpath_owned_by_sidecar(listing: str) -> None:
    """`stat -c '%u %g %a' /models` shows the init container's work: 10001:10001, 0755."""
    assert listing.split() == [str(UID), str(UID), "755"], listing


def write_yaml(path: Path, docs: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path
