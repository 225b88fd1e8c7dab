"""The container image, built and run with podman (marker ``image``).

No registry is reachable here, so the base is bootstrapped from Debian packages with
debootstrap and imported (the Dockerfile's BASE_IMAGE argument). The image then runs
read-only as its non-root user with a models directory mounted: a bundle is promoted,
/metrics answers, and SIGTERM stops it with exit code 0. Storage lives under the test's
temporary directory and is removed afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, free_port, http_get, parse_metrics, require_tool, wait_for, write_bundle

pytestmark = pytest.mark.image
BASE = "localhost/forecaster-base:bookworm"
IMAGE = "localhost/forecaster-sidecar:test"
UID = 10001


def debian_mirror() -> str:
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    return "http://deb.debian.org/debian"


class Podman:
    def __init__(self, root: Path) -> None:
        self.podman = require_tool("podman")
        (root / "tmp").mkdir(parents=True)
        (root / "containers.conf").write_text(
            '[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]\n'
            '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n')
        (root / "storage.conf").write_text(
            f'[storage]\ndriver = "vfs"\ngraphroot = "{root}/graph"\nrunroot = "{root}/run"\n')
        self.env = {**os.environ, "CONTAINERS_CONF": str(root / "containers.conf"),
                    "CONTAINERS_STORAGE_CONF": str(root / "storage.conf"),
                    "TMPDIR": str(root / "tmp")}

    def __call__(self, *args: str, stdin: bytes | None = None,
                 timeout: float = 600) -> subprocess.CompletedProcess[bytes]:
        out = subprocess.run([self.podman, *args], env=self.env, input=stdin,
                             capture_output=True, timeout=timeout, check=False)
        assert out.returncode == 0, f"podman {args[0]}: {out.stderr.decode()[-3000:]}"
        return out


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    root = tmp_path_factory.mktemp("podman")
    pm = Podman(root)
    debootstrap = require_tool("debootstrap")
    require_tool("runc")
    rootfs = root / "rootfs"
    subprocess.run([debootstrap, "--variant=minbase", "--include=python3,python3-venv",
                    "bookworm", str(rootfs), debian_mirror()], check=True,
                   capture_output=True, timeout=900)
    tar = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], capture_output=True,
                         check=True, timeout=300)
    shutil.rmtree(rootfs)
    pm("import", "-", BASE, stdin=tar.stdout)
    build = ["build", "--pull=never", "--network", "host", "--build-arg",
             f"BASE_IMAGE={BASE}", "-t", IMAGE]
    cert = os.environ.get("SSL_CERT_FILE")
    if cert and Path(cert).is_file():  # the proxy CA these machines need, never in a layer
        build += ["--secret", f"id=cacert,src={cert}"]
    pm(*build, str(ROOT), timeout=900)
    try:
        yield pm
    finally:
        subprocess.run([pm.podman, "system", "reset", "--force"], env=pm.env,
                       capture_output=True, check=False, timeout=300)
        shutil.rmtree(root, ignore_errors=True)


def test_image_runs_read_only_as_non_root_and_stops_on_sigterm(
    podman: Podman, tmp_path: Path
) -> None:
    """The image promotes a bundle read-only as UID 10001, serves /metrics, exits 0 on TERM."""
    models = tmp_path / "models"
    models.mkdir()
    os.chown(models, UID, UID)
    port = free_port()
    name = f"fs-test-{port}"
    podman("run", "-d", "--name", name, "--read-only", "--network", "host",
           "-v", f"{models}:/models", IMAGE, "--poll-interval", "1", "--no-reload",
           "--metrics-addr", "127.0.0.1", "--metrics-port", str(port))
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


def test_seed_entry_point_exists_in_the_image(podman: Podman) -> None:
    """/sidecar/sidecar.sh in the image passes its arguments to the sidecar."""
    out = podman("run", "--rm", "--read-only", "--network", "none", "--entrypoint",
                 "/sidecar/sidecar.sh", IMAGE, "--help")
    assert b"forecaster-sidecar" in out.stdout
