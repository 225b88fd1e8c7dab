"""The shipped manifest on a real cluster (k3s, kind, minikube): `uv run pytest -m e2e_k3s`.

Uses the cluster of the current kubeconfig (KUBECONFIG). The images must be in the
cluster's runtime under the names the manifest uses (forecaster-sidecar:latest,
forecaster:latest). With K3S_IMPORT set to a command, the test builds both images with
podman as tests/images.py does, saves them into one archive under the names a
containerd node resolves (docker.io/library/...), and runs the command with the
archive's path in place of ``{}`` (appended when there is none):

    K3S_IMPORT="k3s ctr images import {}"        # k3s (as root)
    K3S_IMPORT="kind load image-archive {}"      # kind
    K3S_IMPORT="minikube image load {}"          # minikube

It renders k8s/ with kustomize into a throwaway namespace, with the Secret and the same
named edits as the pod test (pod_scenario.scenario_edits) plus its own hostPath, runs the
pod test's scenario through `kubectl exec` and `kubectl port-forward` (bundles are
written into the volume and staged from inside the sidecar container, so the node need
not be this machine), checks what only a cluster does (probes run by the kubelet make
the pod Ready, admission accepted runAsNonRoot, the Service routes to the metrics port),
deletes the pod and reads the sidecar's stop line, then deletes the namespace. The
node keeps the empty directory /var/lib/<namespace>.

Without a reachable cluster it is skipped and says why; it cannot run on the CI machines.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from images import images
from pod_scenario import (
    SECRET,
    TOKEN_DIR,
    Edit,
    Timings,
    broken_bundle_is_rolled_back,
    container_index,
    find,
    hostpath_owned_by_sidecar,
    probes_answer_inside_the_pod,
    promote_v1,
    scenario_edits,
    secret,
    shipped,
    sidecar_is_confined,
    wait_for,
    wrong_token_is_refused,
)

from tests.support import ROOT, http_get

pytestmark = pytest.mark.e2e_k3s
KUBECTL = shutil.which("kubectl")
IMPORT = os.environ.get("K3S_IMPORT", "").strip()
__all__ = ["images"]  # the image build fixture, used only with K3S_IMPORT
BUNDLES = "/models/.e2e-bundles"
SIDECAR_PY = "/opt/venv/bin/python"


def kubectl(*args: str, stdin: str | None = None, check: bool = True, timeout: float = 120) -> str:
    assert KUBECTL is not None
    out = subprocess.run(
        [KUBECTL, *args], input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and out.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args[:4])}: {out.stderr.strip()}")
    return out.stdout


def cluster_reachable() -> str | None:
    if KUBECTL is None:
        return "kubectl is not installed"
    probe = subprocess.run(
        [KUBECTL, "get", "--raw", "/readyz", "--request-timeout=5s"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return f"no reachable cluster in the current kubeconfig ({probe.stderr.strip()[:200]})"
    return None


def import_images(request: pytest.FixtureRequest, workdir: Path) -> None:
    """Build both images with podman and import them with the K3S_IMPORT command."""
    images = request.getfixturevalue("images")
    names = []
    for local in (images.sidecar, images.app):
        # containerd resolves "forecaster:latest" as docker.io/library/forecaster:latest,
        # and podman would save it as localhost/forecaster:latest.
        name = "docker.io/library/" + local.split("/", 1)[1]
        images.podman("tag", local, name)
        names.append(name)
    archive = workdir / "images.tar"
    images.podman("save", "--multi-image-archive", "-o", str(archive), *names, timeout=600)
    archive.chmod(0o644)
    command = IMPORT.replace("{}", str(archive)) if "{}" in IMPORT else f"{IMPORT} {archive}"
    out = subprocess.run(
        command, shell=True, capture_output=True, text=True, timeout=900, check=False
    )
    assert out.returncode == 0, f"K3S_IMPORT failed: {out.stderr[-2000:]}"


def cluster_edits(namespace: str) -> list[Edit]:
    models = next(
        i
        for i, v in enumerate(find(shipped(), "Deployment")["spec"]["template"]["spec"]["volumes"])
        if v["name"] == "models"
    )
    return [
        Edit(
            "hostpath",
            "a throwaway namespace gets a directory of its own on the node, "
            "never the production /var/lib/forecaster-models",
            "Deployment",
            [
                {
                    "op": "replace",
                    "value": f"/var/lib/{namespace}",
                    "path": f"/spec/template/spec/volumes/{models}/hostPath/path",
                }
            ],
        )
    ]


def kustomization(directory: Path, namespace: str, token: str) -> Path:
    """k8s/ as a kustomize base, in the namespace, with the Secret and the named edits."""
    (directory / "secret.yaml").write_text(yaml.safe_dump(secret(token)))
    edits = [*cluster_edits(namespace), *scenario_edits()]
    (directory / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": namespace,
                "resources": [os.path.relpath(ROOT / "k8s", directory), "secret.yaml"],
                "patches": [
                    {
                        "target": {
                            "kind": e.kind,
                            "name": find(shipped(), e.kind)["metadata"]["name"],
                        },
                        "patch": yaml.safe_dump(e.ops),
                    }
                    for e in edits
                ],
            }
        )
    )
    return directory


class PortForward:
    """`kubectl port-forward` to the pod on free ports of 127.0.0.1."""

    def __init__(self, namespace: str, pod: str, *ports: int) -> None:
        assert KUBECTL is not None
        self.proc = subprocess.Popen(
            [
                KUBECTL,
                "-n",
                namespace,
                "port-forward",
                "--address",
                "127.0.0.1",
                f"pod/{pod}",
                *(f":{p}" for p in ports),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.local: dict[int, int] = {}
        assert self.proc.stdout is not None
        while len(self.local) < len(ports):
            line = self.proc.stdout.readline()
            assert line, (
                f"port-forward ended: {self.proc.stderr.read() if self.proc.stderr else ''}"
            )
            found = re.search(r"127\.0\.0\.1:(\d+) -> (\d+)", line)
            if found:
                self.local[int(found[2])] = int(found[1])

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class KubePod:
    """The scenario's view of the pod, through kubectl."""

    def __init__(self, namespace: str, pod: str) -> None:
        self.namespace, self.pod = namespace, pod
        app = find(shipped(), "Deployment")["spec"]["template"]["spec"]["containers"][
            container_index("forecaster")
        ]
        self.app_port = int(app["ports"][0]["containerPort"])
        self.metrics_port = int(find(shipped(), "ConfigMap")["data"]["METRICS_PORT"])
        self.forward = PortForward(namespace, pod, self.app_port, self.metrics_port)

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        return kubectl("-n", self.namespace, *args, stdin=stdin)

    def exec(self, container: str, *argv: str) -> str:
        return self.kubectl("exec", self.pod, "-c", container, "--", *argv)

    def stage(self, files: dict[str, bytes], version: str) -> None:
        code = (
            "import base64, json, pathlib, sys; d = pathlib.Path(sys.argv[1]);"
            "d.mkdir(parents=True);"
            "[(d / n).write_bytes(base64.b64decode(b)) for n, b in json.load(sys.stdin).items()]"
        )
        payload = json.dumps({n: base64.b64encode(b).decode() for n, b in files.items()})
        self.kubectl(
            "exec",
            "-i",
            self.pod,
            "-c",
            "sidecar",
            "--",
            SIDECAR_PY,
            "-c",
            code,
            f"{BUNDLES}/{version}",
            stdin=payload,
        )
        self.exec(
            "sidecar", "forecaster-sidecar", "stage", f"{BUNDLES}/{version}", "--version", version
        )

    def current(self) -> str:
        return self.exec("sidecar", "readlink", "/models/current").strip()

    def app_get(self, path: str) -> tuple[int, str]:
        return http_get(f"http://127.0.0.1:{self.forward.local[self.app_port]}{path}")

    def sidecar_get(self, path: str) -> tuple[int, str]:
        return http_get(f"http://127.0.0.1:{self.forward.local[self.metrics_port]}{path}")

    def set_sidecar_token(self, token: str) -> None:
        patch = json.dumps({"stringData": {"token": token}})
        self.kubectl("patch", "secret", SECRET, "--type", "merge", "-p", patch)
        # The kubelet rewrites a mounted Secret on its next sync (up to about a minute).
        wait_for(
            "the kubelet to update the mounted Secret",
            lambda: self.exec("sidecar", "cat", f"{TOKEN_DIR}/token").strip() == token,
            deadline=180,
            pause=2,
        )

    def logs(self, container: str) -> str:
        return self.kubectl("logs", self.pod, "-c", container)

    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.kubectl("get", "pod", self.pod, "-o", "json"))["status"])


@pytest.fixture
def deployed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KubePod]:
    reason = cluster_reachable()
    if reason:
        pytest.skip(reason)
    if IMPORT:
        import_images(request, tmp_path)
    namespace = f"forecaster-e2e-{secrets.token_hex(3)}"
    kubectl("create", "namespace", namespace)
    pod: KubePod | None = None
    try:
        kubectl("apply", "-k", str(kustomization(tmp_path, namespace, secrets.token_hex(16))))
        kubectl(
            "-n", namespace, "rollout", "status", "deploy/forecaster", "--timeout=180s", timeout=200
        )
        name = kubectl(
            "-n",
            namespace,
            "get",
            "pod",
            "-l",
            "app=forecaster",
            "-o",
            "jsonpath={.items[0].metadata.name}",
        )
        pod = KubePod(namespace, name)
        yield pod
    finally:
        if pod is not None:
            pod.forward.close()
        # The test deleted its pod; empty the node's directory from the pod that replaced it.
        kubectl(
            "-n",
            namespace,
            "rollout",
            "status",
            "deploy/forecaster",
            "--timeout=120s",
            check=False,
            timeout=150,
        )
        kubectl(
            "-n",
            namespace,
            "exec",
            "deploy/forecaster",
            "-c",
            "sidecar",
            "--",
            "sh",
            "-c",
            "rm -rf /models/* /models/.[!.]*",
            check=False,
        )
        kubectl(
            "delete",
            "namespace",
            namespace,
            "--wait=true",
            "--timeout=120s",
            check=False,
            timeout=150,
        )


def test_shipped_manifest_runs_on_a_cluster(deployed: KubePod) -> None:
    """On a real cluster the pod is Ready by its probes, promotes, reloads with the
    Secret's token, rolls back, refuses a wrong token, routes its Service, stops cleanly."""
    pod, timings = deployed, Timings({})
    conditions = {c["type"]: c["status"] for c in pod.status()["conditions"]}
    assert conditions["Ready"] == "True"  # the kubelet ran the startup and readiness probes
    init = pod.status()["initContainerStatuses"][0]
    assert init["name"] == "volume-owner" and init["state"]["terminated"]["exitCode"] == 0
    hostpath_owned_by_sidecar(pod.exec("sidecar", "stat", "-c", "%u %g %a", "/models"))

    promote_v1(pod, timings)
    broken_bundle_is_rolled_back(pod, timings)
    wrong_token_is_refused(pod)
    probes_answer_inside_the_pod(pod)
    sidecar_is_confined(pod)
    service = (
        "import urllib.request as u; print(u.urlopen("
        "'http://forecaster-sidecar:9177/metrics', timeout=10).status)"
    )
    assert pod.exec("forecaster", "python3", "-c", service).strip() == "200"

    assert KUBECTL is not None
    with subprocess.Popen(
        [KUBECTL, "-n", pod.namespace, "logs", "-f", pod.pod, "-c", "sidecar", "--tail=1"],
        stdout=subprocess.PIPE,
        text=True,
    ) as follow:
        pod.kubectl("delete", "pod", pod.pod, "--wait=true", "--timeout=60s")
        tail, _ = follow.communicate(timeout=30)
    assert '"stopped"' in tail
    print("cluster test seconds:", timings.seconds)
