"""A real model server: MLServer (KServe V2 repository API) reloaded by the sidecar.

MLServer runs from its own virtualenv (`MLSERVER_VENV`, default `.cache/mlserver-venv`,
which .ci/run creates) on 127.0.0.1, serving MODELS_ROOT/current; the real sidecar
calls its load endpoint and verifies the version with its ready endpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import (
    IN_CI,
    ROOT,
    SidecarProcess,
    base_env,
    free_port,
    run_cli,
    wait_for,
    write_bundle,
)

pytestmark = pytest.mark.modelserver
VENV = Path(os.environ.get("MLSERVER_VENV", ROOT / ".cache" / "mlserver-venv"))
BUILD = ROOT / "examples" / "mlserver" / "build_bundle.py"
MODEL = "forecaster"


def venv_python() -> Path:
    python = VENV / "bin" / "python"
    if not (VENV / "bin" / "mlserver").exists():
        message = f"MLServer is not installed in {VENV} (see .ci/run or examples/mlserver)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return python


@dataclass
class Server:
    url: str
    models: Path
    tmp: Path
    proc: subprocess.Popen[bytes]

    def infer(self, x: float = 2.0) -> tuple[str, float]:
        body = json.dumps(
            {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP64", "data": [x]}]}
        ).encode()
        request = urllib.request.Request(
            f"{self.url}/v2/models/{MODEL}/infer",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read())
        return answer["model_version"], float(answer["outputs"][0]["data"][0])

    def build(self, version: str, slope: float = 2.0, broken: bool = False) -> Path:
        out = self.tmp / f"bundle-{version}"
        args = [
            str(venv_python()),
            str(BUILD),
            str(out),
            "--version",
            version,
            "--slope",
            str(slope),
        ]
        subprocess.run([*args, "--broken"] if broken else args, check=True, timeout=120)
        return out

    def stage(self, version: str, slope: float = 2.0, broken: bool = False) -> None:
        out = self.build(version, slope, broken)
        staged = run_cli("stage", str(out), "--version", version, env=base_env(self.models))
        assert staged.returncode == 0, staged.stderr


@pytest.fixture
def mlserver(models: Path, tmp_path: Path) -> Iterator[Server]:
    python = venv_python()
    port = free_port()
    server = Server(f"http://127.0.0.1:{port}", models, tmp_path, None)  # type: ignore[arg-type]
    server.stage("v1", slope=2.0)
    assert run_cli("--once", env=base_env(models)).returncode == 0
    env = {
        **os.environ,
        "MLSERVER_HOST": "127.0.0.1",
        "MLSERVER_HTTP_PORT": str(port),
        "MLSERVER_GRPC_PORT": str(free_port()),
        "MLSERVER_METRICS_PORT": str(free_port()),
        "MLSERVER_PARALLEL_WORKERS": "0",
        "MLSERVER_DEBUG": "false",
        "MLSERVER_METRICS_DIR": str(tmp_path / "metrics"),
        "MLSERVER_ENVIRONMENTS_DIR": str(tmp_path / "envs"),
    }
    server.proc = subprocess.Popen(
        [str(python.parent / "mlserver"), "start", str(models / "current")],
        env=env,
        cwd=tmp_path,
        stdout=(tmp_path / "mlserver.log").open("wb"),
        stderr=subprocess.STDOUT,
    )

    def ready() -> bool:
        assert server.proc.poll() is None, (tmp_path / "mlserver.log").read_text()
        try:
            return server.infer()[0] == "v1"
        except OSError:
            return False

    wait_for(ready, deadline=120, what="MLServer serving v1")
    yield server
    server.proc.terminate()
    server.proc.wait(30)


@pytest.fixture
def sidecar(mlserver: Server, start_daemon: Callable[..., SidecarProcess]) -> SidecarProcess:
    daemon = start_daemon(
        mlserver.models,
        "--poll-interval",
        "1",
        RELOAD_URL=f"{mlserver.url}/v2/repository/models/{MODEL}/load",
        RELOAD_VERIFY_URL=f"{mlserver.url}/v2/models/{MODEL}/versions/{{version}}/ready",
        ROLLBACK_ON_RELOAD_FAILURE="true",
        RELOAD_TIMEOUT="10",
        RELOAD_RETRIES="1",
    )
    daemon.wait_ready()
    return daemon


def serves(server: Server, version: str) -> bool:
    try:
        return server.infer()[0] == version
    except OSError:
        return False


def test_new_version_is_served_after_promotion(mlserver: Server, sidecar: SidecarProcess) -> None:
    """Stage v2: inference answers from v2 (slope 3: 3 * 2 + 1 = 7)."""
    assert mlserver.infer() == ("v1", pytest.approx(5.0))
    built = mlserver.build("v2", slope=3.0)
    files = {p.name: p.read_bytes() for p in built.iterdir()}
    write_bundle(mlserver.models / "staging", files, version="v2", ready=False)
    start = time.monotonic()
    (mlserver.models / "staging" / "READY").write_text("")
    wait_for(lambda: serves(mlserver, "v2"), deadline=30, what="v2 served")
    print(f"READY to the first inference answered by v2: {time.monotonic() - start:.3f} s")
    assert mlserver.infer() == ("v2", pytest.approx(7.0))
    assert sidecar.metric("model_sidecar_reload_failures_total", reason="verify") == 0


def test_zero_failed_requests_across_20_promotions(
    mlserver: Server, sidecar: SidecarProcess
) -> None:
    """A client inferring continuously sees no failed request across 20 promotions."""
    stop = threading.Event()
    counts = {"ok": 0, "failed": 0}
    errors: list[str] = []

    def client() -> None:
        while not stop.is_set():
            try:
                mlserver.infer()
                counts["ok"] += 1
            except Exception as exc:
                counts["failed"] += 1
                errors.append(repr(exc))

    thread = threading.Thread(target=client)
    thread.start()
    try:
        for n in range(20):
            version = f"c{n:02d}"
            mlserver.stage(version, slope=3.0 if n % 2 else 2.0)
            wait_for(lambda v=version: serves(mlserver, v), deadline=30, what=version)
    finally:
        stop.set()
        thread.join(30)
    print(f"inference requests under churn: {counts['ok']} ok, {counts['failed']} failed")
    assert counts["failed"] == 0, errors[:5]
    assert counts["ok"] > 20


def test_broken_model_is_rolled_back_and_the_previous_keeps_serving(
    mlserver: Server, sidecar: SidecarProcess
) -> None:
    """A bundle with right checksums but a broken model: load fails, current rolls back."""
    mlserver.stage("v2", slope=3.0)
    wait_for(lambda: serves(mlserver, "v2"), deadline=30, what="v2 served")
    mlserver.stage("v3", broken=True)
    sidecar.wait_metric(
        "model_sidecar_rollbacks_total", lambda v: v == 1, trigger="reload_failure", deadline=60
    )
    assert os.readlink(mlserver.models / "current") == "versions/v2"
    assert mlserver.infer() == ("v2", pytest.approx(7.0))
    failures = sum(
        sidecar.metric("model_sidecar_reload_failures_total", reason=r) or 0
        for r in ("connection", "timeout", "http_status", "verify")
    )
    assert failures >= 1
    sidecar.wait_metric(
        "model_sidecar_reload_requests_total", lambda v: (v or 0) >= 2, outcome="success"
    )
