"""The container image, built and run with podman (marker ``image``).

The image is the one tests/images.py builds from this checkout's Dockerfile on a
debootstrapped Debian base (shared with tests/test_pod.py: one build per session). It
runs read-only as its non-root user with a models directory mounted: a bundle is
promoted, /metrics answers, and SIGTERM stops it with exit code 0. Podman's storage is
removed after the session.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from images import Images, images

from tests.support import free_port, http_get, parse_metrics, wait_for, write_bundle

pytestmark = pytest.mark.image
__all__ = ["images"]  # the session fixture, shared with tests/test_pod.py
UID = 10001


def test_image_runs_read_only_as_non_root_and_stops_on_sigterm(
    images: Images, tmp_path: Path
) -> None:
    """The image promotes a bundle read-only as UID 10001, serves /metrics, exits 0 on TERM."""
    podman = images.podman
    models = tmp_path / "models"
    models.mkdir()
    os.chown(models, UID, UID)
    port = free_port()
    name = f"fs-test-{port}"
    podman(
        "run",
        "-d",
        "--name",
        name,
        "--read-only",
        "--network",
        "host",
        "-v",
        f"{models}:/models",
        images.sidecar,
        "--poll-interval",
        "1",
        "--no-reload",
        "--metrics-addr",
        "127.0.0.1",
        "--metrics-port",
        str(port),
    )
    url = f"http://127.0.0.1:{port}/metrics"

    def metrics() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        try:
            status, text = http_get(url)
        except OSError:
            return {}
        return parse_metrics(text) if status == 200 else {}

    wait_for(lambda: bool(metrics()), deadline=60, what="/metrics of the container")
    write_bundle(models / "staging", {"model.bin": b"in a container"}, version="c1")
    success = ("model_sidecar_promotions_total", (("outcome", "success"),))
    wait_for(lambda: metrics().get(success) == 1, deadline=60, what="the promotion")
    assert os.readlink(models / "current") == "versions/c1"
    assert (models / "versions" / "c1").stat().st_uid == UID
    inspect = json.loads(podman("inspect", name).stdout)[0]
    assert inspect["Config"]["User"] == f"{UID}:{UID}"
    assert inspect["HostConfig"]["ReadonlyRootfs"] is True
    podman("stop", "-t", "30", name, timeout=60)
    exit_code = podman("inspect", name, "--format", "{{.State.ExitCode}}").stdout.strip()
    assert exit_code == b"0"
    logs = podman("logs", name).stderr.decode() + podman("logs", name).stdout.decode()
    assert "received SIGTERM" in logs and "stopped" in logs
    podman("rm", name)


def test_seed_entry_point_exists_in_the_image(images: Images) -> None:
    """/sidecar/sidecar.sh in the image passes its arguments to the sidecar."""
    out = images.podman(
        "run",
        "--rm",
        "--read-only",
        "--network",
        "none",
        "--entrypoint",
        "/sidecar/sidecar.sh",
        images.sidecar,
        "--help",
    )
    assert b"forecaster-sidecar" in out.stdout
