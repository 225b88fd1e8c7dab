"""The real daemon as a subprocess: endpoints, interval, metrics, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.support import (
    ReloadServer,
    SidecarProcess,
    base_env,
    http_get,
    require_tool,
    run_cli,
    wait_for,
    write_bundle,
)

INTERVAL = "model_sidecar_poll_interval_seconds"


def test_daemon_promotes_and_serves_endpoints(
    models: Path, start_daemon: Callable[..., SidecarProcess]
) -> None:
    """The daemon promotes a staged bundle; /healthz and /readyz say 200; 404 elsewhere."""
    daemon = start_daemon(models, "--poll-interval", "1")
    daemon.wait_ready()
    write_bundle(models / "staging", {"m": b"1"}, version="v1")
    daemon.wait_metric("model_sidecar_current_version_info", lambda v: v == 1, version="v1")
    assert http_get(daemon.url + "/healthz")[0] == 200
    assert http_get(daemon.url + "/readyz")[0] == 200
    assert http_get(daemon.url + "/other")[0] == 404
    assert daemon.stop() == 0


def test_sigterm_and_sigint_exit_0(
    models: Path, start_daemon: Callable[..., SidecarProcess]
) -> None:
    """SIGTERM, SIGINT and SIGHUP stop the daemon cleanly with exit code 0 and a log line."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        daemon = start_daemon(models)
        daemon.wait_ready()
        assert daemon.stop(sig) == 0
        assert "stopped" in daemon.log() and signal.Signals(sig).name in daemon.log()


def test_sigterm_during_a_reload_finishes_the_pass(
    models: Path, start_daemon: Callable[..., SidecarProcess], reload_server: ReloadServer
) -> None:
    """A SIGTERM while a pass waits on the reload lets it finish, then exits 0."""
    reload_server.script = ["hang"]
    daemon = start_daemon(
        models,
        "--poll-interval",
        "1",
        RELOAD_URL=reload_server.url,
        RELOAD_TIMEOUT="2",
        RELOAD_RETRIES="0",
    )
    daemon.wait_ready()
    write_bundle(models / "staging", {"m": b"1"}, version="v1")
    wait_for(lambda: len(reload_server.requests) == 1, what="the reload request")
    assert daemon.stop() == 0
    assert "reload of v1 failed (timeout)" in daemon.log()
    assert os.readlink(models / "current") == "versions/v1"


def test_sigterm_does_not_wait_for_a_long_reload(
    models: Path, start_daemon: Callable[..., SidecarProcess], reload_server: ReloadServer
) -> None:
    """A stop leaves a reload the server holds for a minute; the next start sends it."""
    reload_server.script = ["hang"]
    env = {"RELOAD_URL": reload_server.url, "RELOAD_TIMEOUT": "60", "RELOAD_RETRIES": "0"}
    daemon = start_daemon(models, "--poll-interval", "1", **env)
    daemon.wait_ready()
    write_bundle(models / "staging", {"m": b"1"}, version="v1")
    wait_for(lambda: len(reload_server.requests) == 1, what="the reload request")
    assert daemon.stop(timeout=20) == 0
    assert "sent again at the next start" in daemon.log()
    assert (models / ".sidecar" / "reload-pending.json").exists()
    again = start_daemon(models, "--poll-interval", "1", **env)
    again.wait_ready()
    wait_for(
        lambda: not (models / ".sidecar" / "reload-pending.json").exists(),
        what="the restarted daemon to deliver the reload",
    )
    assert [r.json()["version"] for r in reload_server.requests] == ["v1", "v1"]


def test_interval_defaults_to_30(models: Path, start_daemon: Callable[..., SidecarProcess]) -> None:
    """With nothing set, the poll interval is 30 seconds."""
    daemon = start_daemon(models)
    daemon.wait_ready()
    assert daemon.metric(INTERVAL) == 30


def test_poll_default_beats_the_builtin_default(
    models: Path, start_daemon: Callable[..., SidecarProcess]
) -> None:
    """POLL_DEFAULT sets the interval when neither flag nor manifest does."""
    daemon = start_daemon(models, POLL_DEFAULT="7")
    daemon.wait_ready()
    assert daemon.metric(INTERVAL) == 7


def _promote_with_interval(models: Path, version: str, interval: object) -> None:
    write_bundle(models / "staging", {"m": version.encode()}, version=version, ready=False)
    path = models / "staging" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["sidecar"] = {"poll_interval_seconds": interval}
    path.write_text(json.dumps(manifest))
    (models / "staging" / "READY").write_text("")


def test_manifest_interval_beats_poll_default_and_applies_without_restart(
    models: Path, start_daemon: Callable[..., SidecarProcess]
) -> None:
    """A promoted manifest's interval replaces POLL_DEFAULT on the running daemon."""
    daemon = start_daemon(models, POLL_DEFAULT="2")
    daemon.wait_ready()
    assert daemon.metric(INTERVAL) == 2
    _promote_with_interval(models, "v1", 3)
    daemon.wait_metric(INTERVAL, lambda v: v == 3)
    polls = daemon.metric("model_sidecar_polls_total") or 0
    daemon.wait_metric("model_sidecar_polls_total", lambda v: (v or 0) >= polls + 2)


def test_cli_interval_beats_the_manifest(
    models: Path, start_daemon: Callable[..., SidecarProcess]
) -> None:
    """--poll-interval overrides the interval in the manifest of current."""
    _promote_with_interval(models, "v1", 5)
    assert run_cli("--once", env=base_env(models)).returncode == 0
    daemon = start_daemon(models, "--poll-interval", "3", POLL_DEFAULT="7")
    daemon.wait_ready()
    assert daemon.metric(INTERVAL) == 3


def test_manifest_of_current_is_read_at_start(
    models: Path, start_daemon: Callable[..., SidecarProcess]
) -> None:
    """The interval of current's manifest applies from the first pass after a restart."""
    _promote_with_interval(models, "v1", 5)
    assert run_cli("--once", env=base_env(models)).returncode == 0
    daemon = start_daemon(models, POLL_DEFAULT="7")
    daemon.wait_ready()
    assert daemon.metric(INTERVAL) == 5


def test_invalid_manifest_interval_is_skipped_with_a_warning(
    models: Path, start_daemon: Callable[..., SidecarProcess]
) -> None:
    """A boolean interval in the manifest is ignored (warning); POLL_DEFAULT applies."""
    _promote_with_interval(models, "v1", True)
    assert run_cli("--once", env=base_env(models)).returncode == 0
    daemon = start_daemon(models, POLL_DEFAULT="7")
    daemon.wait_ready()
    assert daemon.metric(INTERVAL) == 7
    assert "ignoring the poll interval" in daemon.log()


def test_manual_rollback_is_counted_by_the_daemon(
    models: Path, start_daemon: Callable[..., SidecarProcess]
) -> None:
    """A CLI rollback shows in the daemon's rollbacks_total{trigger="manual"}, its version
    gauge and its log."""
    daemon = start_daemon(models, "--poll-interval", "1")
    daemon.wait_ready()
    for version in ("v1", "v2"):
        write_bundle(models / "staging", {"m": version.encode()}, version=version)
        daemon.wait_metric("model_sidecar_current_version_info", lambda v: v == 1, version=version)
    assert run_cli("rollback", env=base_env(models)).returncode == 0
    daemon.wait_metric("model_sidecar_rollbacks_total", lambda v: v == 1, trigger="manual")
    daemon.wait_metric("model_sidecar_current_version_info", lambda v: v == 1, version="v1")
    assert "a rollback command switched current to v1 (from v2)" in daemon.log()


def test_metrics_after_a_scripted_sequence(
    models: Path, start_daemon: Callable[..., SidecarProcess], reload_server: ReloadServer
) -> None:
    """After promotions, a rejection and a failed reload, /metrics holds the right values."""
    promtool = require_tool("promtool")
    daemon = start_daemon(
        models, "--poll-interval", "1", RELOAD_URL=reload_server.url, RELOAD_RETRIES="1"
    )
    daemon.wait_ready()
    write_bundle(models / "staging", {"m": b"1"}, version="v1")
    daemon.wait_metric("model_sidecar_promotions_total", lambda v: v == 1, outcome="success")
    write_bundle(models / "staging", {"m": b"x"}, manifest=b"{")
    daemon.wait_metric("model_sidecar_promotions_total", lambda v: v == 1, outcome="rejected")
    reload_server.script = [500, 500]
    write_bundle(models / "staging", {"m": b"2"}, version="v2")
    daemon.wait_metric(
        "model_sidecar_reload_failures_total", lambda v: v == 1, reason="http_status"
    )
    daemon.wait_metric("model_sidecar_reload_requests_total", lambda v: v == 2, outcome="success")
    m = daemon.metrics()

    def get(name: str, **labels: str) -> float | None:
        return m.get((name, tuple(sorted(labels.items()))))

    assert get("model_sidecar_promotions_total", outcome="success") == 2
    assert get("model_sidecar_promotions_total", outcome="error") == 0
    assert get("model_sidecar_promotion_failures_total", reason="manifest_invalid") == 1
    assert get("model_sidecar_promotion_failures_total", reason="io_error") == 0
    assert get("model_sidecar_promotion_duration_seconds_count") == 2
    assert get("model_sidecar_reload_requests_total", outcome="failure") == 2
    assert get("model_sidecar_reload_failures_total", reason="timeout") == 0
    assert (get("model_sidecar_reload_duration_seconds_count") or 0) >= 2
    assert get("model_sidecar_rollbacks_total", trigger="manual") == 0
    assert get("model_sidecar_current_version_info", version="v2") == 1
    assert get("model_sidecar_current_version_info", version="v1") is None
    assert (get("model_sidecar_last_success_timestamp_seconds") or 0) > 1.7e9
    assert (get("model_sidecar_last_poll_timestamp_seconds") or 0) > 1.7e9
    assert get("model_sidecar_poll_interval_seconds") == 1
    assert (get("model_sidecar_polls_total") or 0) >= 3
    assert get("model_sidecar_staged_pending") == 0
    assert any(k[0] == "model_sidecar_build_info" for k in m)
    assert (get("process_resident_memory_bytes") or 0) > 0
    text = http_get(daemon.url + "/metrics")[1]
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_staged_pending_while_ready_waits(
    models: Path, start_daemon: Callable[..., SidecarProcess]
) -> None:
    """staged_pending is 1 while a READY bundle waits (here: an io_error keeps it)."""
    daemon = start_daemon(models, "--poll-interval", "1", "--no-watch")
    daemon.wait_ready()
    (models / "versions").rmdir()
    (models / "versions").write_text("blocks the publish")
    write_bundle(models / "staging", {"m": b"1"}, version="v1")
    daemon.wait_metric("model_sidecar_staged_pending", lambda v: v == 1)
    daemon.wait_metric(
        "model_sidecar_promotion_failures_total", lambda v: (v or 0) >= 1, reason="io_error"
    )
    (models / "versions").unlink()
    daemon.wait_metric("model_sidecar_staged_pending", lambda v: v == 0)
    assert os.readlink(models / "current") == "versions/v1"


def test_metrics_port_0_disables_the_server(models: Path, tmp_path: Path) -> None:
    """METRICS_PORT=0 runs the daemon without an HTTP server."""
    env = base_env(models, METRICS_PORT="0")
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "--poll-interval", "1"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    write_bundle(models / "staging", {"m": b"1"}, version="v1")
    wait_for(lambda: (models / "current").is_symlink(), what="promotion")
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "serving /metrics" not in err


def test_exposition_has_no_created_series(
    models: Path, start_daemon: Callable[..., SidecarProcess]
) -> None:
    """The daemon's /metrics carries no *_created series (they double the exposition)."""
    daemon = start_daemon(models)
    daemon.wait_ready()
    status, text = http_get(daemon.url + "/metrics")
    assert status == 200 and "model_sidecar_polls_total" in text
    assert "_created" not in text


def test_sigterm_during_start_up_exits_0(
    models: Path, start_daemon: Callable[..., SidecarProcess]
) -> None:
    """A SIGTERM while the daemon starts (reading current's large manifest, before its
    scheduler runs) ends it with exit 0 and a log line, not the default kill."""
    version = models / "versions" / "v1"
    version.mkdir(parents=True)
    (version / "m.bin").write_bytes(b"m")
    manifest = version / "manifest.json"
    manifest.write_bytes(b" " * (30 * 1024 * 1024) + b'{"version": "v1"}')
    (models / "current").symlink_to("versions/v1")
    daemon = start_daemon(models, "--poll-interval", "1")
    end = time.monotonic() + 30
    while time.monotonic() < end and not _has_open(daemon.proc.pid, manifest):
        assert daemon.proc.poll() is None, daemon.log()
        time.sleep(0.002)
    assert daemon.stop(signal.SIGTERM) == 0, daemon.log()
    assert "SIGTERM" in daemon.log(), daemon.log()


def _has_open(pid: int, path: Path) -> bool:
    try:
        return any(
            os.readlink(f"/proc/{pid}/fd/{fd}") == str(path) for fd in os.listdir(f"/proc/{pid}/fd")
        )
    except OSError:
        return False
