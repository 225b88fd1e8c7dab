"""Reload against a real HTTP server on 127.0.0.1 that records every request."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Harness, ReloadServer, write_bundle

from service import history
from service.config import Config
from service.reload import Reloader, ReloadRequest


def promote(h: Harness, version: str) -> None:
    write_bundle(h.layout.staging, {"model.bin": version.encode()}, version=version)
    h.promoter.run_pass()


def test_reload_request_has_method_body_and_version_header(
    harness: Callable[..., Harness], reload_server: ReloadServer
) -> None:
    """POST with JSON body {version, path, previous} and X-Model-Version."""
    h = harness(reload_url=reload_server.url + "/reload")
    promote(h, "v1")
    promote(h, "v2")
    first, second = reload_server.requests
    assert (second.method, second.path) == ("POST", "/reload")
    assert second.headers["X-Model-Version"] == "v2"
    assert second.json() == {"version": "v2", "path": str(h.layout.versions / "v2"),
                             "previous": "v1"}
    assert first.json()["previous"] is None
    assert "Authorization" not in second.headers
    assert not h.layout.pending_reload.exists()
    assert h.value("model_sidecar_reload_requests_total", outcome="success") == 2


def test_reload_method_is_configurable(
    harness: Callable[..., Harness], reload_server: ReloadServer
) -> None:
    """RELOAD_METHOD=PUT sends a PUT."""
    h = harness(reload_url=reload_server.url + "/r", reload_method="PUT")
    promote(h, "v1")
    assert reload_server.requests[0].method == "PUT"


def test_bearer_token_from_environment(
    harness: Callable[..., Harness], reload_server: ReloadServer
) -> None:
    """RELOAD_TOKEN is sent as Authorization: Bearer."""
    h = harness(reload_url=reload_server.url, reload_token="tok-123")
    promote(h, "v1")
    assert reload_server.requests[0].headers["Authorization"] == "Bearer tok-123"


def test_token_file_is_reread_for_every_request(
    harness: Callable[..., Harness], reload_server: ReloadServer, tmp_path: Path
) -> None:
    """A rotated RELOAD_TOKEN_FILE takes effect on the next request."""
    token = tmp_path / "token"
    token.write_text("first\n")
    h = harness(reload_url=reload_server.url, reload_token_file=token)
    promote(h, "v1")
    token.write_text("second\n")
    promote(h, "v2")
    assert [r.headers["Authorization"] for r in reload_server.requests] == [
        "Bearer first", "Bearer second"]


def test_503_then_success_is_retried(
    harness: Callable[..., Harness], reload_server: ReloadServer
) -> None:
    """A 503 is retried; both requests are counted by outcome."""
    reload_server.script = [503]
    h = harness(reload_url=reload_server.url, reload_retries=2)
    promote(h, "v1")
    assert len(reload_server.requests) == 2
    assert h.value("model_sidecar_reload_requests_total", outcome="failure") == 1
    assert h.value("model_sidecar_reload_requests_total", outcome="success") == 1
    assert not h.layout.pending_reload.exists()


def test_429_is_retried(harness: Callable[..., Harness], reload_server: ReloadServer) -> None:
    """A 429 is retried like a 5xx."""
    reload_server.script = [429]
    h = harness(reload_url=reload_server.url, reload_retries=1)
    promote(h, "v1")
    assert len(reload_server.requests) == 2
    assert not h.layout.pending_reload.exists()


def test_400_is_not_retried(harness: Callable[..., Harness], reload_server: ReloadServer) -> None:
    """A 4xx other than 429 fails at once with reason http_status."""
    reload_server.default = 400
    h = harness(reload_url=reload_server.url, reload_retries=3)
    promote(h, "v1")
    assert len(reload_server.requests) == 1
    assert h.value("model_sidecar_reload_failures_total", reason="http_status") == 1
    assert h.layout.pending_reload.exists()


def test_5xx_forever_exhausts_the_retries(
    harness: Callable[..., Harness], reload_server: ReloadServer
) -> None:
    """500 forever: 1 + RELOAD_RETRIES requests, then one http_status failure."""
    reload_server.default = 500
    h = harness(reload_url=reload_server.url, reload_retries=2)
    promote(h, "v1")
    assert len(reload_server.requests) == 3
    assert h.value("model_sidecar_reload_requests_total", outcome="failure") == 3
    assert h.value("model_sidecar_reload_failures_total", reason="http_status") == 1


def test_hung_server_times_out(
    harness: Callable[..., Harness], reload_server: ReloadServer
) -> None:
    """A server that accepts and never answers fails with reason timeout."""
    reload_server.default = "hang"
    h = harness(reload_url=reload_server.url, reload_timeout=0.5, reload_retries=0)
    promote(h, "v1")
    assert h.value("model_sidecar_reload_failures_total", reason="timeout") == 1
    assert h.value("model_sidecar_reload_requests_total", outcome="failure") == 1


def test_connection_refused_is_a_connection_failure(harness: Callable[..., Harness]) -> None:
    """Nothing listening: reason connection, every attempt counted."""
    from conftest import free_port

    h = harness(reload_url=f"http://127.0.0.1:{free_port()}/reload", reload_retries=1)
    promote(h, "v1")
    assert h.value("model_sidecar_reload_failures_total", reason="connection") == 1
    assert h.value("model_sidecar_reload_requests_total", outcome="failure") == 2


def test_failed_reload_is_delivered_by_a_later_pass(
    harness: Callable[..., Harness], reload_server: ReloadServer
) -> None:
    """At least once: a failed reload is sent again on the next pass until it succeeds."""
    reload_server.script = [500]
    h = harness(reload_url=reload_server.url, reload_retries=0)
    promote(h, "v1")
    assert h.layout.pending_reload.exists()
    h.promoter.run_pass()
    assert [r.json()["version"] for r in reload_server.requests] == ["v1", "v1"]
    assert not h.layout.pending_reload.exists()
    outcomes = [e["outcome"] for e in history.read(h.layout.history) if e["event"] == "reload"]
    assert outcomes == ["failure", "success"]


def test_failed_reload_is_delivered_after_a_restart(
    harness: Callable[..., Harness], reload_server: ReloadServer
) -> None:
    """A new promoter on the same volume (a restart) delivers the pending reload."""
    reload_server.script = [500]
    h = harness(reload_url=reload_server.url, reload_retries=0)
    promote(h, "v1")
    restarted = harness(reload_url=reload_server.url, reload_retries=0)
    restarted.promoter.run_pass()
    assert len(reload_server.requests) == 2
    assert not restarted.layout.pending_reload.exists()


def test_newer_promotion_supersedes_a_pending_reload(
    harness: Callable[..., Harness], reload_server: ReloadServer
) -> None:
    """Only the newest version is reloaded once a newer promotion exists."""
    reload_server.script = [500]
    h = harness(reload_url=reload_server.url, reload_retries=0)
    promote(h, "v1")
    promote(h, "v2")
    assert [r.json()["version"] for r in reload_server.requests] == ["v1", "v2"]
    assert not h.layout.pending_reload.exists()


def test_rollback_on_reload_failure(
    harness: Callable[..., Harness], reload_server: ReloadServer
) -> None:
    """With ROLLBACK_ON_RELOAD_FAILURE, current goes back and the previous is reloaded."""
    h = harness(reload_url=reload_server.url, reload_retries=0, rollback_on_reload_failure=True)
    promote(h, "v1")
    reload_server.script = [500]
    promote(h, "v2")
    assert h.layout.current.resolve().name == "v1"
    assert [r.json()["version"] for r in reload_server.requests] == ["v1", "v2", "v1"]
    assert h.value("model_sidecar_rollbacks_total", trigger="reload_failure") == 1
    rolled = [e for e in history.read(h.layout.history) if e["event"] == "rolled_back"]
    assert [(e["version"], e["previous"], e["trigger"]) for e in rolled] == [
        ("v1", "v2", "reload_failure")]


def test_failed_reload_after_rollback_does_not_roll_back_again(
    harness: Callable[..., Harness], reload_server: ReloadServer
) -> None:
    """When the reload of the rolled-back version fails too, current stays there."""
    h = harness(reload_url=reload_server.url, reload_retries=0, rollback_on_reload_failure=True)
    promote(h, "v1")
    promote(h, "v2")
    reload_server.default = 500
    promote(h, "v3")
    h.promoter.run_pass()
    assert h.layout.current.resolve().name == "v2"
    assert h.value("model_sidecar_rollbacks_total", trigger="reload_failure") == 1
    assert json.loads(h.layout.pending_reload.read_text())["version"] == "v2"


def test_without_rollback_a_failed_reload_keeps_the_new_version(
    harness: Callable[..., Harness], reload_server: ReloadServer
) -> None:
    """By default a failed reload leaves current on the new version."""
    h = harness(reload_url=reload_server.url, reload_retries=0)
    promote(h, "v1")
    reload_server.default = 500
    promote(h, "v2")
    assert h.layout.current.resolve().name == "v2"
    assert h.value("model_sidecar_rollbacks_total", trigger="reload_failure") == 0


def test_verify_url_confirms_the_new_version(
    make_config: Callable[..., Config], reload_server: ReloadServer
) -> None:
    """After a 2xx reload, RELOAD_VERIFY_URL is polled with {version} substituted."""
    config = make_config(reload_url=reload_server.url + "/load",
                         reload_verify_url=reload_server.url + "/ready/{version}")
    result = Reloader(config).reload(ReloadRequest("v7", "/m/versions/v7", None))
    assert result.error is None
    assert [r.path for r in reload_server.requests] == ["/load", "/ready/v7"]


def test_verify_failure_is_reason_verify(
    make_config: Callable[..., Config], reload_server: ReloadServer
) -> None:
    """A verify URL that never answers 2xx within RELOAD_TIMEOUT fails with verify."""
    reload_server.script = [200]
    reload_server.default = 503
    config = make_config(reload_url=reload_server.url + "/load", reload_timeout=0.5,
                         reload_verify_url=reload_server.url + "/ready/{version}")
    result = Reloader(config).reload(ReloadRequest("v7", "/m/versions/v7", None))
    assert result.error is not None and result.error.reason == "verify"
    assert (result.attempts, result.failed_attempts) == (1, 0)
    assert len(reload_server.requests) >= 2


def test_token_never_appears_in_logs(
    harness: Callable[..., Harness], reload_server: ReloadServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Failing reloads with a token log nothing that contains it."""
    caplog.set_level(logging.DEBUG)
    reload_server.default = 401
    h = harness(reload_url=reload_server.url, reload_token="sekrit-token-value")
    promote(h, "v1")
    h.promoter.run_pass()
    assert reload_server.requests[0].headers["Authorization"] == "Bearer sekrit-token-value"
    assert "sekrit-token-value" not in caplog.text
    assert "sekrit-token-value" not in h.layout.history.read_text()
