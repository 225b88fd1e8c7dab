"""The shipped manifest played as a pod by podman (marker ``pod``, in the default run).

k8s/forecaster-sidecar.yaml is read and changed by code, by the named edits of
POD_EDITS (each forced by a podman 4.3 limitation or by the test's own host) and of
pod_scenario.scenario_edits() (the scenario's settings, the same on a real cluster), then
played with `podman kube play` using the images that tests/images.py builds from the
README's two Dockerfiles. Then, as a user would: a producer on the host (root, as an
operator on a node) stages bundles into the hostPath with `python -m service stage`
from this checkout's venv, and the test reads the app and /metrics through the ports
the pod publishes on 127.0.0.1.

Nothing is mocked. What podman cannot show (probes run by a kubelet, runAsNonRoot and
fsGroup admission, Service routing) is left to tests/test_e2e_k3s.py.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from images import STATE, Images, Podman, images
from pod_scenario import (
    SECRET,
    Edit,
    Timings,
    apply_edit,
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
    write_yaml,
    wrong_token_is_refused,
)

from tests.support import ROOT, free_port, http_get

pytestmark = pytest.mark.pod
__all__ = ["images"]  # the session fixture, shared with tests/test_image.py
POD = "forecaster-pod-0"  # podman plays a Deployment as one pod named <name>-pod-0
KUBE_NETWORK = "podman-default-kube-network"  # the bridge kube play creates for its pods


def volume_index(name: str) -> int:
    pod = find(shipped(), "Deployment")["spec"]["template"]["spec"]
    return next(i for i, v in enumerate(pod["volumes"]) if v["name"] == name)


def pod_edits(host_path: Path, app_port: int, metrics_port: int) -> list[Edit]:
    """The edits podman needs; each names the limitation that forces it."""
    spec = "/spec/template/spec"
    app, sidecar = container_index("forecaster"), container_index("sidecar")
    return [
        Edit(
            "init-restart-policy",
            "podman 4.3 loops an init container under restartPolicy "
            "Always and the play fails (podman issues 15631, 16343); OnFailure runs it once",
            "Deployment",
            [{"op": "add", "path": f"{spec}/restartPolicy", "value": "OnFailure"}],
        ),
        Edit(
            "hostpath",
            "the node's /var/lib/forecaster-models would be this machine's: the "
            "test's own directory stands in for it",
            "Deployment",
            [
                {
                    "op": "replace",
                    "value": str(host_path),
                    "path": f"{spec}/volumes/{volume_index('models')}/hostPath/path",
                }
            ],
        ),
        Edit(
            "ports-on-loopback",
            "podman publishes every containerPort on the host, on all "
            "addresses and at the same number: free ports on 127.0.0.1 cannot collide",
            "Deployment",
            [
                {
                    "op": "add",
                    "path": f"{spec}/containers/{app}/ports/0/hostIP",
                    "value": "127.0.0.1",
                },
                {
                    "op": "add",
                    "path": f"{spec}/containers/{app}/ports/0/hostPort",
                    "value": app_port,
                },
                {
                    "op": "add",
                    "path": f"{spec}/containers/{sidecar}/ports/0/hostIP",
                    "value": "127.0.0.1",
                },
                {
                    "op": "add",
                    "path": f"{spec}/containers/{sidecar}/ports/0/hostPort",
                    "value": metrics_port,
                },
            ],
        ),
    ]


def played_manifest(
    host_path: Path, token: str, app_port: int, metrics_port: int
) -> list[dict[str, Any]]:
    docs = shipped()
    for edit in [*pod_edits(host_path, app_port, metrics_port), *scenario_edits()]:
        print(f"edit {edit.name}: {edit.reason}")
        apply_edit(docs, edit)
    # The Secret a user creates with kubectl: podman mounts it only when its document
    # comes before the Deployment in the played file.
    deployment = docs.index(find(docs, "Deployment"))
    docs.insert(deployment, secret(token))
    return docs


@dataclass
class PodmanPod:
    """The played pod, reached as a user on this host reaches it."""

    podman: Podman
    host_path: Path
    bundles: Path
    app_port: int
    metrics_port: int

    def stage(self, files: dict[str, bytes], version: str) -> None:
        bundle = self.bundles / version
        bundle.mkdir(mode=0o755)
        for name, data in files.items():
            (bundle / name).write_bytes(data)
            (bundle / name).chmod(0o644)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RELOAD_", "MODELS_"))}
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "service",
                "stage",
                str(bundle),
                "--version",
                version,
                "--models-root",
                str(self.host_path),
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, f"stage {version}: {out.stderr}"

    def current(self) -> str:
        return os.readlink(self.host_path / "current")

    def app_get(self, path: str) -> tuple[int, str]:
        return http_get(f"http://127.0.0.1:{self.app_port}{path}")

    def sidecar_get(self, path: str) -> tuple[int, str]:
        return http_get(f"http://127.0.0.1:{self.metrics_port}{path}")

    def exec(self, container: str, *argv: str) -> str:
        return self.podman.text("exec", f"{POD}-{container}", *argv, timeout=60)

    def set_sidecar_token(self, token: str) -> None:
        # podman copies a Secret into a named volume once, at play; the kubelet would
        # update the mounted files. Write the volume as the kubelet does: new file, rename.
        mount = Path(
            self.podman.text("volume", "inspect", SECRET, "--format", "{{.Mountpoint}}").strip()
        )
        (mount / ".token.new").write_text(token)
        (mount / ".token.new").rename(mount / "token")

    def logs(self, container: str) -> str:
        out = self.podman("logs", f"{POD}-{container}", timeout=60)
        return out.stdout.decode(errors="replace") + out.stderr.decode(errors="replace")


def inspect(podman: Podman, *names: str) -> list[dict[str, Any]]:
    return list(json.loads(podman.text("inspect", *names)))


def leftovers(podman: Podman) -> dict[str, list[str]]:
    """What podman still holds: pods, containers, volumes, secrets, networks."""
    listings = {
        "pods": ["pod", "ps", "-q"],
        "containers": ["ps", "-aq"],
        "volumes": ["volume", "ls", "-q"],
        "secrets": ["secret", "ls", "--format", "{{.Name}}"],
        "networks": ["network", "ls", "-q"],
    }
    return {kind: podman.text(*args).split() for kind, args in listings.items()}


@pytest.fixture
def workdir() -> Iterator[Path]:
    """The hostPath's parent and the producer's bundles, under podman's state directory."""
    STATE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=STATE, prefix="pod-") as name:
        path = Path(name)
        path.chmod(0o755)
        yield path


def test_shipped_manifest_runs_as_a_pod(images: Images, workdir: Path) -> None:
    """The shipped manifest, played by podman, promotes, reloads with the Secret's token,
    rolls back a broken bundle, refuses a wrong token, runs confined, stops cleanly."""
    podman, timings = images.podman, Timings(dict(images.seconds))
    host_path, bundles = workdir / "forecaster-models", workdir / "bundles"
    bundles.mkdir(mode=0o755)
    before = leftovers(podman)
    pod = PodmanPod(podman, host_path, bundles, free_port(), free_port())
    played = write_yaml(
        workdir / "played.yaml",
        played_manifest(host_path, secrets.token_hex(16), pod.app_port, pod.metrics_port),
    )
    start = time.monotonic()
    try:
        # Created, not started: podman removes an init container once it has run, so its
        # capabilities can only be inspected before.
        podman("kube", "play", "--start=false", str(played), timeout=300)
        init = next(c for c in inspect(podman, POD)[0]["Containers"] if "volume-owner" in c["Name"])
        init_caps = inspect(podman, init["Id"])[0]
        assert sorted(init_caps["EffectiveCaps"]) == ["CAP_CHOWN", "CAP_FOWNER"]
        assert sorted(init_caps["BoundingCaps"]) == ["CAP_CHOWN", "CAP_FOWNER"]
        podman("pod", "start", POD, timeout=120)
        wait_for("the sidecar to be ready", lambda: pod.sidecar_get("/readyz")[0] == 200)
        timings.lap("play (kube play -> sidecar ready)", start)
        hostpath_owned_by_sidecar(
            subprocess.run(
                ["stat", "-c", "%u %g %a", str(host_path)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )

        promote_v1(pod, timings)
        broken_bundle_is_rolled_back(pod, timings)
        wrong_token_is_refused(pod)
        probes_answer_inside_the_pod(pod)
        sidecar_is_confined(pod)

        # podman stops with SIGTERM and kills after 10 s (it ignores the grace period, which
        # the manifest sets to the same 10 s): exit code 0, not 137, means no one was killed.
        podman("pod", "stop", POD, timeout=120)
        for state in inspect(podman, f"{POD}-forecaster", f"{POD}-sidecar"):
            assert state["State"]["ExitCode"] == 0, (state["Name"], state["State"])
        assert '"stopped"' in pod.logs("sidecar")
    finally:
        down = podman.run("kube", "down", str(played), timeout=300)
        timings.lap("whole test after the image build", start)
        print("pod test seconds:", timings.seconds)
        left = {
            kind: sorted(set(names) - set(before[kind]))
            for kind, names in leftovers(podman).items()
        }
        # podman 4.3's kube down keeps what kube play made besides the pod: the Secret,
        # the named volume it copied the Secret into, the bridge network for kube pods.
        podman.run("volume", "rm", SECRET)
        podman.run("secret", "rm", SECRET)
        podman.run("network", "rm", KUBE_NETWORK)
    assert down.returncode == 0, down.stderr.decode()
    assert left == {
        "pods": [],
        "containers": [],
        "volumes": [SECRET],
        "secrets": [SECRET],
        "networks": [KUBE_NETWORK],
    }, left
    assert leftovers(podman) == before
