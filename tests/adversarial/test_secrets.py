"""Secrets never leave: a whole scripted run of the real sidecar process, then a scan of
everything it wrote or served for the tokens and for a password given in a URL.

The run uses a token from a file (rotated, once caught half-way as two lines, once not
a token, once missing), a token from the environment, and every reload failure path
(5xx, 401, a closed connection, a hang, connection refused), at LOG_LEVEL=DEBUG so that
the HTTP libraries say all they would. Nothing here is mocked.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    SidecarProcess,
    base_env,
    free_port,
    http_get,
    run_cli,
    serve_http,
    write_bundle,
)

pytestmark = pytest.mark.slow

FAILURES = "model_sidecar_reload_failures_total"
REQUESTS = "model_sidecar_reload_requests_total"


class RecordingServer:
    """A reload server on 127.0.0.1 that records the Authorization header of every request
    and answers with ``action``: an HTTP status, "close" (hang up without a reply) or
    "hang" (no reply until the client gives up)."""

    def __init__(self) -> None:
        self.auth: list[str | None] = []
        self.action: int | str = 200
        self.stopping = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server.auth.append(self.headers.get("Authorization"))
                action = server.action
                if action == "close":
                    self.close_connection = True
                elif action == "hang":
                    server.stopping.wait(10)
                else:
                    self.send_response(int(action))
                    self.send_header("Content-Length", "0")
                    self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = serve_http(Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}/reload"

    def close(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    recording = RecordingServer()
    yield recording
    recording.close()


def write_atomically(path: Path, data: bytes) -> None:
    """As a Secret volume changes: the new content appears whole, never half-written."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class Run:
    """One daemon and the steps of the script, each waiting on the daemon's own metrics."""

    def __init__(self, daemon: SidecarProcess, models: Path) -> None:
        self.daemon = daemon
        self.models = models
        self.served: list[str] = []
        daemon.wait_ready()

    def count(self, name: str, **labels: str) -> float:
        return self.daemon.metric(name, **labels) or 0.0

    def stage(self, version: str) -> None:
        write_bundle(self.models / "staging", {"model.bin": version.encode()}, version=version)

    def wait_failure(self, reason: str, before: float) -> None:
        self.daemon.wait_metric(FAILURES, lambda v: (v or 0) > before, reason=reason)

    def wait_success(self, before: float) -> None:
        self.daemon.wait_metric(REQUESTS, lambda v: (v or 0) > before, outcome="success")

    def finish(self) -> None:
        status, text = http_get(self.daemon.url + "/metrics")
        assert status == 200
        self.served.append(text)
        assert self.daemon.stop() == 0


def test_no_secret_leaves_the_sidecar(
    tmp_path: Path, server: RecordingServer, start_daemon: Callable[..., SidecarProcess]
) -> None:
    """Tokens (file, rotated, env) and a URL password appear nowhere but in the request."""
    token_a, token_b, token_c = (f"tok-{secrets.token_urlsafe(18)}" for _ in range(3))
    bad_token = f"bad\u20ac{secrets.token_hex(8)}"
    password = f"pw{secrets.token_hex(10)}"
    leaks = [token_a, token_b, token_c, bad_token, bad_token[4:], password]
    models, token_file = tmp_path / "models", tmp_path / "secret" / "token"
    models.mkdir()
    token_file.parent.mkdir()
    write_atomically(token_file, token_a.encode() + b"\n")
    env = {
        "RELOAD_URL": server.url,
        "RELOAD_TIMEOUT": "1",
        "RELOAD_RETRIES": "1",
        "LOG_LEVEL": "DEBUG",
    }
    outputs: list[str] = []

    # 1. A token from a file, rotated, once caught half-way, once invalid, once missing.
    run = Run(
        start_daemon(
            models, "run", "--poll-interval", "1", RELOAD_TOKEN_FILE=str(token_file), **env
        ),
        models,
    )
    run.stage("v1")
    run.wait_success(0)
    assert server.auth == [f"Bearer {token_a}"]

    write_atomically(token_file, f"{token_a}\n{token_b}".encode())  # rotation half-way
    run.stage("v2")
    run.wait_failure("token", 0)
    assert server.auth == [f"Bearer {token_a}"], "a two-line token file was sent"
    write_atomically(token_file, token_b.encode() + b"\r\n")
    run.wait_success(1)
    assert server.auth[1:] == [f"Bearer {token_b}"]

    for action, reason in (
        (500, "http_status"),
        ("close", "connection"),
        ("hang", "timeout"),
        (401, "http_status"),
    ):
        server.action = action
        before, sent = run.count(FAILURES, reason=reason), len(server.auth)
        run.stage(f"v{len(server.auth) + 10}")
        run.wait_failure(reason, before)
        assert server.auth[sent:] and set(server.auth[sent:]) == {f"Bearer {token_b}"}
    server.action = 200
    sent = len(server.auth)
    for content in (bad_token.encode() + b"\n", None):
        before = run.count(FAILURES, reason="token")
        if content is None:
            token_file.unlink()
        else:
            write_atomically(token_file, content)
        run.wait_failure("token", before)
    assert len(server.auth) == sent, "a request went out without a valid token"
    write_atomically(token_file, token_b.encode())
    run.wait_success(run.count(REQUESTS, outcome="success"))
    assert server.auth[-1] == f"Bearer {token_b}"
    run.finish()
    outputs.append(run.daemon.log())

    # 2. A token from the environment: delivered, then a failure path.
    server.auth.clear()
    run = Run(
        start_daemon(models, "run", "--poll-interval", "1", RELOAD_TOKEN=token_c, **env), models
    )
    run.stage("e1")
    run.wait_success(0)
    server.action = "close"
    run.stage("e2")
    run.wait_failure("connection", 0)
    assert set(server.auth) == {f"Bearer {token_c}"}
    run.finish()
    outputs.append(run.daemon.log())
    served = run.served

    # 3. Connection refused, once each way of giving the token.
    refused = {**env, "RELOAD_URL": f"http://127.0.0.1:{free_port()}/reload"}
    for token_env in ({"RELOAD_TOKEN": token_c}, {"RELOAD_TOKEN_FILE": str(token_file)}):
        write_bundle(models / "staging", {"m": b"refused"}, version=f"r{len(outputs)}")
        proc = run_cli("--once", env=base_env(models, **refused, **token_env))
        assert proc.returncode == 1, proc.stderr
        assert "reload of" in proc.stderr and "(connection)" in proc.stderr
        outputs += [proc.stdout, proc.stderr]

    # 4. A password in a URL is refused at start, exit 2.
    for where in (
        {"RELOAD_URL": f"http://ops:{password}@127.0.0.1:9/reload"},
        {"RELOAD_VERIFY_URL": f"http://ops:{password}@127.0.0.1:9/ready"},
    ):
        proc = run_cli("--once", env=base_env(models, **{**env, **where}))
        assert proc.returncode == 2 and "RELOAD_TOKEN_FILE" in proc.stderr, proc.stderr
        outputs += [proc.stdout, proc.stderr]
    proc = run_cli(
        "--once", "--reload-url", f"http://ops:{password}@127.0.0.1:9/r", env=base_env(models)
    )
    assert proc.returncode == 2
    outputs += [proc.stdout, proc.stderr]

    # 5. Everything the operator can see.
    status_env = base_env(models, RELOAD_TOKEN=token_c)
    for args in (["status"], ["status", "--json"]):
        proc = run_cli(*args, "--models-root", str(models), env=status_env)
        assert proc.returncode == 0, proc.stderr
        outputs += [proc.stdout, proc.stderr]
    history_text = (models / ".sidecar" / "history.jsonl").read_text()
    assert '"reason": "token"' in history_text or '"reason":"token"' in history_text
    volume_files = [
        p.read_bytes().decode("utf-8", "replace") for p in models.rglob("*") if p.is_file()
    ]
    assert "(token)" in outputs[0] and "(timeout)" in outputs[0]
    for text in [*outputs, *served, *run.served, history_text, *volume_files]:
        for leak in leaks:
            assert leak not in text, f"{leak!r} leaked into: {text[:2000]}"
