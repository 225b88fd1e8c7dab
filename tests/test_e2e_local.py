"""The seed's scenario without Kubernetes: the example app and the sidecar as two
processes sharing a directory: stage -> promote -> reload with token -> /predict."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import ROOT, SidecarProcess, base_env, free_port, http_get, run_cli, wait_for

APP = ROOT / "examples" / "forecaster_app" / "app.py"


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("e2e-token\n")
    return path


@pytest.fixture
def app(models: Path, tmp_path: Path, token_file: Path) -> Iterator[str]:
    port = free_port()
    env = {
        "MODELS_CURRENT": str(models / "current"),
        "APP_ADDR": "127.0.0.1",
        "APP_PORT": str(port),
        "RELOAD_TOKEN_FILE": str(token_file),
    }
    proc = subprocess.Popen(
        [sys.executable, str(APP)],
        env=env,
        stdout=(tmp_path / "app.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return http_get(url + "/healthz")[0] in (200, 503)
        except OSError:
            return False

    wait_for(up, what="the example app")
    yield url
    proc.terminate()
    proc.wait(10)


def make_bundle(tmp_path: Path, slope: float) -> Path:
    src = tmp_path / f"bundle-{slope}"
    src.mkdir()
    (src / "model.json").write_text(json.dumps({"slope": slope, "intercept": 1.0}))
    return src


def predict(app: str) -> dict[str, object]:
    status, body = http_get(app + "/predict?x=2")
    return json.loads(body) if status == 200 else {}


def sidecar(
    start_daemon: Callable[..., SidecarProcess], models: Path, app: str, token_file: Path
) -> SidecarProcess:
    daemon = start_daemon(
        models,
        "--poll-interval",
        "1",
        RELOAD_URL=app + "/reload",
        RELOAD_TOKEN_FILE=str(token_file),
        RELOAD_RETRIES="0",
    )
    daemon.wait_ready()
    return daemon


def stage(models: Path, tmp_path: Path, version: str, slope: float) -> None:
    out = run_cli(
        "stage", str(make_bundle(tmp_path, slope)), "--version", version, env=base_env(models)
    )
    assert out.returncode == 0, out.stderr


def test_stage_promote_reload_predict(
    models: Path,
    tmp_path: Path,
    app: str,
    token_file: Path,
    start_daemon: Callable[..., SidecarProcess],
) -> None:
    """Each staged version is promoted, reloaded with the token, and served by /predict."""
    daemon = sidecar(start_daemon, models, app, token_file)
    for version, slope in (("v1", 2.0), ("v2", 3.0)):
        stage(models, tmp_path, version, slope)
        wait_for(lambda v=version: predict(app).get("version") == v, what=version)
        assert predict(app)["prediction"] == 1.0 + slope * 2
    assert daemon.metric("model_sidecar_reload_requests_total", outcome="success") == 2
    assert daemon.metric("model_sidecar_reload_failures_total", reason="http_status") == 0


def test_wrong_token_fails_the_reload_and_the_old_model_serves(
    models: Path,
    tmp_path: Path,
    app: str,
    token_file: Path,
    start_daemon: Callable[..., SidecarProcess],
) -> None:
    """With a wrong token the app answers 401: counted as http_status; v1 keeps serving."""
    daemon = sidecar(start_daemon, models, app, token_file)
    stage(models, tmp_path, "v1", 2.0)
    wait_for(lambda: predict(app).get("version") == "v1", what="v1")
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-token")
    daemon.stop()
    daemon = sidecar(start_daemon, models, app, wrong)
    stage(models, tmp_path, "v2", 3.0)
    daemon.wait_metric(
        "model_sidecar_reload_failures_total", lambda v: (v or 0) >= 1, reason="http_status"
    )
    assert predict(app)["version"] == "v1"
    wrong.write_text(token_file.read_text())  # rotate the Secret: the next poll delivers
    wait_for(lambda: predict(app).get("version") == "v2", what="v2 after the rotation")
