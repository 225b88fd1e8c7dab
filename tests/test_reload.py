"""Reload against real HTTP servers on 127.0.0.1: one that records every request, and
hostile ones that dribble, flood or never end their replies."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import socket
import socketserver
import ssl
import string
import subprocess
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import history, tokens
from service.config import Config, load_config
from service.errors import ConfigError
from service.reload import Reloader, ReloadRequest, ReloadResult
from service.reload_http import MAX_REPLY_BYTES, describe, make_retry, make_session
from tests.support import Harness, ReloadServer, require_tool, run_cli, write_bundle


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
    assert second.json() == {
        "version": "v2",
        "path": str(h.layout.versions / "v2"),
        "previous": "v1",
    }
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
        "Bearer first",
        "Bearer second",
    ]


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
    from tests.support import free_port

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
        ("v1", "v2", "reload_failure")
    ]


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
    config = make_config(
        reload_url=reload_server.url + "/load",
        reload_verify_url=reload_server.url + "/ready/{version}",
    )
    result = Reloader(config).reload(ReloadRequest("v7", "/m/versions/v7", None))
    assert result.error is None
    assert [r.path for r in reload_server.requests] == ["/load", "/ready/v7"]


def test_verify_failure_is_reason_verify(
    make_config: Callable[..., Config], reload_server: ReloadServer
) -> None:
    """A verify URL that never answers 2xx within RELOAD_TIMEOUT fails with verify."""
    reload_server.script = [200]
    reload_server.default = 503
    config = make_config(
        reload_url=reload_server.url + "/load",
        reload_timeout=0.5,
        reload_verify_url=reload_server.url + "/ready/{version}",
    )
    result = Reloader(config).reload(ReloadRequest("v7", "/m/versions/v7", None))
    assert result.error is not None and result.error.reason == "verify"
    assert (result.attempts, result.failed_attempts) == (1, 0)
    assert len(reload_server.requests) >= 2


def test_token_never_appears_in_logs(
    harness: Callable[..., Harness],
    reload_server: ReloadServer,
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


# -- hostile servers: every attempt is bounded in time and in bytes read --------------------

SERVER_LIFETIME = 60.0  # every hostile loop ends by then, whatever the client does
REQUEST = ReloadRequest("v1", "/m/versions/v1", None)


def _endless(head: bytes, piece: bytes, pause: float = 0.0) -> Iterator[bytes]:
    yield head
    end = time.monotonic() + SERVER_LIFETIME
    while time.monotonic() < end:
        time.sleep(pause)
        yield piece


def _dribble(data: Iterator[int], pause: float) -> Iterator[bytes]:
    end = time.monotonic() + SERVER_LIFETIME
    for byte in data:
        if time.monotonic() > end:
            return
        time.sleep(pause)
        yield bytes([byte])


BLOB = b"x" * 65536
REPLIES: dict[str, Callable[[], Iterator[bytes]]] = {
    "endless body": lambda: _endless(b"HTTP/1.1 200 OK\r\n\r\n", BLOB),
    "chunked endless body": lambda: _endless(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"10000\r\n" + BLOB + b"\r\n"
    ),
    "huge body": lambda: _endless(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n", BLOB),
    "dribbling body": lambda: _endless(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n", b"x", pause=0.02
    ),
    "dribbling endless body": lambda: _endless(b"HTTP/1.1 200 OK\r\n\r\n", b"x", pause=0.02),
    "dribbling status line": lambda: _dribble(iter(b"HTTP/1.1 200 OK\r\n\r\n" * 1000), 0.02),
    "dribbling headers": lambda: _dribble(
        itertools.chain(b"HTTP/1.1 200 OK\r\n", itertools.repeat(ord("a"))), 0.02
    ),
    "header flood": lambda: _endless(b"HTTP/1.1 200 OK\r\n", b"X-A: " + b"a" * 1000 + b"\r\n"),
    "503 with an endless body": lambda: _endless(b"HTTP/1.1 503 Busy\r\n\r\n", BLOB),
}


class HostileServer:
    """A raw TCP server on 127.0.0.1 that reads the request, then sends ``reply()``.

    It counts connections (one per attempt: the sidecar closes each after its reply)
    and bytes it managed to send; every loop ends after SERVER_LIFETIME or close().
    """

    def __init__(
        self, reply: Callable[[], Iterator[bytes]], tls: ssl.SSLContext | None = None
    ) -> None:
        self.scheme = "https" if tls else "http"
        self.connections = 0
        self.stopping = threading.Event()
        server = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                server.connections += 1
                self.request.settimeout(SERVER_LIFETIME)
                try:
                    self.request.recv(65536)
                    for piece in reply():
                        if server.stopping.is_set():
                            return
                        self.request.sendall(piece)
                except OSError:
                    return  # the client gave up: that is the point

        self.tcp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.tcp.daemon_threads = True
        if tls is not None:
            self.tcp.socket = tls.wrap_socket(self.tcp.socket, server_side=True)
        threading.Thread(target=self.tcp.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.tcp.server_address[1]}"

    def close(self) -> None:
        self.stopping.set()
        self.tcp.shutdown()
        self.tcp.server_close()


@pytest.fixture
def hostile() -> Iterator[Callable[..., HostileServer]]:
    servers: list[HostileServer] = []

    def start(kind: str, tls: ssl.SSLContext | None = None) -> HostileServer:
        servers.append(HostileServer(REPLIES[kind], tls))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def bounded(action: Callable[[], ReloadResult]) -> ReloadResult:
    """Run ``action`` in a thread; a reload that never ends fails the test instead of hanging
    it (the bound is SERVER_LIFETIME, far beyond any RELOAD_TIMEOUT used here)."""
    results: list[ReloadResult | BaseException] = []

    def run() -> None:
        try:
            results.append(action())
        except BaseException as exc:  # reported below, in the test's thread
            results.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(SERVER_LIFETIME)
    assert results, "the reload did not end"
    if isinstance(results[0], BaseException):
        raise results[0]
    return results[0]


def no_sleep(seconds: float) -> None:
    pass


@pytest.mark.parametrize(
    "kind",
    ["dribbling body", "dribbling endless body", "dribbling status line", "dribbling headers"],
)
def test_a_dribbling_reply_is_a_timeout_retried_like_others(
    kind: str, make_config: Callable[..., Config], hostile: Callable[[str], HostileServer]
) -> None:
    """A reply that trickles in is cut at RELOAD_TIMEOUT: reason timeout, every attempt made."""
    server = hostile(kind)
    config = make_config(reload_url=server.url, reload_timeout=0.3, reload_retries=2)
    result = bounded(lambda: Reloader(config, sleep=no_sleep).reload(REQUEST))
    assert result.error is not None and result.error.reason == "timeout"
    assert (result.attempts, result.failed_attempts) == (3, 3)
    assert server.connections == 3


@pytest.mark.parametrize("kind", ["endless body", "chunked endless body", "huge body"])
def test_an_endless_2xx_body_is_read_no_further_than_64_kib(
    kind: str, make_config: Callable[..., Config], hostile: Callable[[str], HostileServer]
) -> None:
    """A 200 whose body never ends: the status decides (success), at most 64 KiB is read."""
    server = hostile(kind)
    config = make_config(reload_url=server.url, reload_timeout=5, reload_retries=0)
    reloader = Reloader(config)
    bounded(lambda: Reloader(config).reload(REQUEST))  # imports requests before measuring
    tracemalloc.start()
    try:
        result = bounded(lambda: reloader.reload(REQUEST))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.error is None and result.attempts == 1
    assert peak < 16 * MAX_REPLY_BYTES, f"peak {peak} bytes while reading the reply"


def test_503_with_an_endless_body_is_retried_and_bounded(
    make_config: Callable[..., Config], hostile: Callable[[str], HostileServer]
) -> None:
    """The body of a retried 5xx is bounded too: every attempt is made, reason http_status."""
    server = hostile("503 with an endless body")
    config = make_config(reload_url=server.url, reload_timeout=5, reload_retries=2)
    result = bounded(lambda: Reloader(config, sleep=no_sleep).reload(REQUEST))
    assert result.error is not None and result.error.reason == "http_status"
    assert (result.attempts, result.failed_attempts, server.connections) == (3, 3, 3)


def test_a_header_flood_is_refused_after_64_kib(
    make_config: Callable[..., Config], hostile: Callable[[str], HostileServer]
) -> None:
    """Headers that never end are not read past 64 KiB: a connection failure, not a hang."""
    server = hostile("header flood")
    config = make_config(reload_url=server.url, reload_timeout=5, reload_retries=1)
    result = bounded(lambda: Reloader(config, sleep=no_sleep).reload(REQUEST))
    assert result.error is not None and result.error.reason == "connection"
    assert "longer than 65536 bytes" in result.error.detail
    assert server.connections == 2


@pytest.mark.parametrize("kind", ["dribbling body", "dribbling headers", "endless body"])
def test_verify_url_gets_are_bounded_too(
    kind: str,
    make_config: Callable[..., Config],
    reload_server: ReloadServer,
    hostile: Callable[[str], HostileServer],
) -> None:
    """A verify URL that dribbles or floods ends within RELOAD_TIMEOUT: reason verify."""
    server = hostile(kind)
    slow = kind != "endless body"
    config = make_config(
        reload_url=reload_server.url + "/load",
        reload_timeout=0.5,
        reload_verify_url=server.url + "/ready/{version}",
    )
    result = bounded(lambda: Reloader(config).reload(REQUEST))
    if slow:
        assert result.error is not None and result.error.reason == "verify"
    else:  # a 200 is a confirmation, whatever follows it
        assert result.error is None
    assert len(reload_server.requests) == 1


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made by openssl."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            require_tool("openssl"),
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("dribbling headers", "timeout"), ("dribbling body", "timeout"), ("endless body", None)],
)
def test_https_attempts_are_bounded_too(
    kind: str,
    reason: str | None,
    tls_files: tuple[Path, Path],
    make_config: Callable[..., Config],
    hostile: Callable[..., HostileServer],
) -> None:
    """Over TLS the watchdog ends a dribbling reply and the byte cap holds, as over HTTP."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*tls_files)
    server = hostile(kind, context)
    session = make_session(make_retry(1))
    session.verify = str(tls_files[0])
    config = make_config(reload_url=server.url, reload_timeout=0.5, reload_retries=1)
    result = bounded(lambda: Reloader(config, session, sleep=no_sleep).reload(REQUEST))
    assert (result.error and result.error.reason) == reason
    assert result.attempts == server.connections == (2 if reason else 1)


def test_a_dribbling_server_is_counted_as_a_timeout_by_the_pass(
    harness: Callable[..., Harness], hostile: Callable[[str], HostileServer]
) -> None:
    """Through a whole pass: the failure is counted with reason timeout and delivery waits."""
    server = hostile("dribbling headers")
    h = harness(reload_url=server.url, reload_timeout=0.3, reload_retries=0)
    promote(h, "v1")
    assert h.value("model_sidecar_reload_failures_total", reason="timeout") == 1
    assert h.value("model_sidecar_reload_requests_total", outcome="failure") == 1
    assert h.layout.pending_reload.exists()


# -- the token: checked before it is sent, never shown --------------------------------------

TOKEN_MESSAGES = (
    "the token is empty",
    tokens.RULE,
    f"the token is longer than {tokens.MAX_TOKEN_BYTES} characters",
)
B64TOKEN = st.from_regex(r"\A[A-Za-z0-9\-._~+/]+=*\Z")


def token_failure(result: ReloadResult, where: str) -> str:
    """The detail of a token failure, after checking its shape; fails on anything else."""
    assert result.error is not None and result.error.reason == "token"
    assert (result.attempts, result.failed_attempts) == (0, 0)
    assert result.error.detail.startswith(where + ": ")
    return result.error.detail[len(where) + 2 :]


BAD_FILES: dict[str, bytes] = {
    "two lines (rotation caught half-way)": b"old-token-AAAA\nnew-token-BBBB\n",
    "non-latin-1": "tok\u20acen-CCCC".encode(),
    "latin-1 but not a token character": "tok\u00e9n-DDDD".encode("latin-1"),
    "empty": b"",
    "only a newline": b"\n",
    "spaces": b"token with spaces EEEE",
    "NUL": b"token\x00FFFF",
    "too long": b"G" * (tokens.MAX_TOKEN_BYTES + 1),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_bad_token_file_fails_the_reload_with_reason_token(
    case: str,
    harness: Callable[..., Harness],
    reload_server: ReloadServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bad token file: reason token counted, history written, no request, no secret shown."""
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "token"
    path.write_bytes(BAD_FILES[case])
    h = harness(reload_url=reload_server.url, reload_token_file=path)
    promote(h, "v1")
    assert reload_server.requests == []
    assert h.value("model_sidecar_reload_failures_total", reason="token") == 1
    assert h.value("model_sidecar_reload_requests_total", outcome="failure") == 0
    events = [e for e in history.read(h.layout.history) if e["event"] == "reload"]
    assert [(e["outcome"], e["reason"]) for e in events] == [("failure", "token")]
    assert h.layout.pending_reload.exists()
    for secret in re.findall(rb"[A-Z]{4}", BAD_FILES[case]):
        assert secret.decode() not in caplog.text
    assert f"RELOAD_TOKEN_FILE {path}: " in caplog.text


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _directory(path: Path) -> None:
    path.mkdir()


def _dangling(path: Path) -> None:
    path.symlink_to(path.parent / "nowhere")


def _mode_000(path: Path) -> None:
    path.write_text("token-GGGG\n")
    path.chmod(0)


UNREADABLE = {
    "missing": lambda p: None,
    "dangling symlink": _dangling,
    "directory": _directory,
    "fifo (must not block)": _fifo,
    "mode 000": _mode_000,
}


@pytest.mark.parametrize("case", UNREADABLE)
def test_a_missing_or_unreadable_token_file_is_reason_token(
    case: str, make_config: Callable[..., Config], reload_server: ReloadServer, tmp_path: Path
) -> None:
    """Missing, a directory, a fifo or no permission: reason token, nothing sent, why given."""
    if case == "mode 000" and os.geteuid() == 0:
        pytest.skip("root reads a file of mode 000; the other cases cover the same path")
    path = tmp_path / "token"
    UNREADABLE[case](path)
    config = make_config(reload_url=reload_server.url, reload_token_file=path)
    result = bounded(lambda: Reloader(config).reload(REQUEST))
    assert token_failure(result, f"RELOAD_TOKEN_FILE {path}").startswith("cannot read it: ")
    assert reload_server.requests == []


def test_token_file_line_ends_are_stripped_once(
    make_config: Callable[..., Config], reload_server: ReloadServer, tmp_path: Path
) -> None:
    """One trailing newline (LF or CRLF) is stripped from the file; the token is sent as is."""
    path = tmp_path / "token"
    config = make_config(reload_url=reload_server.url, reload_token_file=path)
    for content in (b"abc123==\n", b"abc123==\r\n", b"abc123=="):
        path.write_bytes(content)
        assert Reloader(config).reload(REQUEST).error is None
    assert [r.headers["Authorization"] for r in reload_server.requests] == ["Bearer abc123=="] * 3


def test_a_rotation_caught_half_way_recovers_on_the_next_pass(
    harness: Callable[..., Harness], reload_server: ReloadServer, tmp_path: Path
) -> None:
    """Two lines fail one delivery with reason token; once rotated, the new token is sent."""
    path = tmp_path / "token"
    path.write_text("old-token\nnew-tok")
    h = harness(reload_url=reload_server.url, reload_token_file=path)
    promote(h, "v1")
    path.write_text("new-token\n")
    h.promoter.run_pass()
    assert [r.headers["Authorization"] for r in reload_server.requests] == ["Bearer new-token"]
    assert not h.layout.pending_reload.exists()


def test_a_token_failure_rolls_back_when_enabled(
    harness: Callable[..., Harness], reload_server: ReloadServer, tmp_path: Path
) -> None:
    """ROLLBACK_ON_RELOAD_FAILURE: a token failure switches current back like any failure."""
    path = tmp_path / "token"
    path.write_text("good-token\n")
    h = harness(
        reload_url=reload_server.url, reload_token_file=path, rollback_on_reload_failure=True
    )
    promote(h, "v1")
    path.write_text("bad token\n")
    promote(h, "v2")
    assert h.layout.current.resolve().name == "v1"
    assert h.value("model_sidecar_rollbacks_total", trigger="reload_failure") == 1
    assert h.value("model_sidecar_reload_failures_total", reason="token") == 2


def test_an_invalid_configured_token_is_not_sent(
    make_config: Callable[..., Config], reload_server: ReloadServer
) -> None:
    """A Config built around load_config with a bad RELOAD_TOKEN still sends nothing."""
    config = make_config(reload_url=reload_server.url, reload_token="line one\nline two")
    result = Reloader(config).reload(REQUEST)
    assert token_failure(result, "RELOAD_TOKEN") == tokens.RULE
    assert reload_server.requests == []


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(token=B64TOKEN, line_end=st.sampled_from(["", "\n", "\r\n"]))
def test_generated_valid_tokens_are_sent_exactly(
    token: str,
    line_end: str,
    make_config: Callable[..., Config],
    reload_server: ReloadServer,
    tmp_path: Path,
) -> None:
    """Any RFC 6750 token, from file or environment, is sent as Bearer <token>, unchanged."""
    path = tmp_path / "token"
    path.write_bytes((token + line_end).encode())
    reload_server.requests.clear()
    from_env = load_config({}, {"RELOAD_TOKEN": token + line_end}).reload_token
    for config in (
        make_config(reload_url=reload_server.url, reload_token_file=path),
        make_config(reload_url=reload_server.url, reload_token=from_env),
    ):
        assert Reloader(config).reload(REQUEST).error is None
    assert [r.headers["Authorization"] for r in reload_server.requests] == [f"Bearer {token}"] * 2


def _invalid(text: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9\-._~+/]+=*", tokens.strip_line_end(text)) is None


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(min_size=0, max_size=64).filter(_invalid))
def test_generated_invalid_tokens_are_refused_without_a_trace(
    text: str, make_config: Callable[..., Config], reload_server: ReloadServer, tmp_path: Path
) -> None:
    """Any other text is refused, from file (reason token) or env (ConfigError), in fixed words."""
    path = tmp_path / "token"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    reload_server.requests.clear()
    config = make_config(reload_url=reload_server.url, reload_token_file=path)
    result = Reloader(config).reload(REQUEST)
    assert token_failure(result, f"RELOAD_TOKEN_FILE {path}") in TOKEN_MESSAGES
    assert reload_server.requests == []
    if text and "\x00" not in text:  # an environment cannot hold NUL; "" means unset
        with pytest.raises(ConfigError) as caught:
            load_config({}, {"RELOAD_TOKEN": text})
        assert str(caught.value) in {
            f"RELOAD_TOKEN: {m} (the value is not shown)" for m in TOKEN_MESSAGES
        }


def test_error_descriptions_are_scrubbed_of_tokens() -> None:
    """An HTTP error quoting a header value is described without it."""
    exc = requests.exceptions.InvalidHeader(
        "Invalid return character or leading space in header: Authorization: "
        "'Bearer sekrit-token\nother'"
    )
    text = describe(exc, ["sekrit-token"])
    assert "sekrit" not in text and "other" not in text
    assert "\n" not in describe(requests.ConnectionError("a\nb"), [])


# -- credentials in URLs are a configuration error ------------------------------------------

PASSWORDS = st.text(alphabet=string.digits + "!$&*+,;=~%", min_size=3, max_size=24)


@given(password=PASSWORDS, user=st.sampled_from(["", "user", "u:"]))
def test_url_credentials_are_refused_without_showing_them(password: str, user: str) -> None:
    """user:password@ in RELOAD_URL or RELOAD_VERIFY_URL: ConfigError naming RELOAD_TOKEN_FILE."""
    for var in ("RELOAD_URL", "RELOAD_VERIFY_URL"):
        url = (
            f"http://{user or 'u'}:{password}@h/r" if user != "u:" else f"http://u:{password}@h@x/r"
        )
        with pytest.raises(ConfigError) as caught:
            load_config({}, {var: url})
        message = str(caught.value)
        assert message.startswith(f"{var}: ") and "RELOAD_TOKEN_FILE" in message
        assert password not in message


def test_a_user_alone_in_the_url_is_refused() -> None:
    """user@ without a password is refused too (requests would send Basic auth)."""
    with pytest.raises(ConfigError, match="credentials"):
        load_config({}, {"RELOAD_URL": "http://someone@127.0.0.1:8000/reload"})


@pytest.mark.parametrize(
    "url",
    ["user:pw-HHHH@127.0.0.1/reload", "http://u:pw-HHHH/x@h/", "http://u:pw-HHHH@[::1/reload"],
)
def test_a_bad_url_with_an_at_sign_is_not_echoed(url: str) -> None:
    """A URL error never repeats a value that contains '@' (it may hold a password)."""
    with pytest.raises(ConfigError) as caught:
        load_config({}, {"RELOAD_URL": url})
    assert "HHHH" not in str(caught.value) and "RELOAD_URL" in str(caught.value)


def test_an_at_sign_in_the_query_is_allowed() -> None:
    """'@' after the host (a query value) is not a credential."""
    url = "http://127.0.0.1:8000/reload?by=ops@example"
    assert load_config({}, {"RELOAD_URL": url}).reload_url == url


@pytest.mark.parametrize(
    ("args", "env", "secret"),
    [
        (["--reload-url", "http://ops:pw-IIII@127.0.0.1:9/reload"], {}, "pw-IIII"),
        ([], {"RELOAD_VERIFY_URL": "http://ops:pw-JJJJ@127.0.0.1:9/ready"}, "pw-JJJJ"),
        ([], {"RELOAD_TOKEN": "tok-KKKK\nsecond-line"}, "KKKK"),
        ([], {"RELOAD_TOKEN": "tok\u20ac-LLLL"}, "LLLL"),
    ],
)
def test_secrets_in_the_configuration_exit_2_unseen(
    args: list[str], env: dict[str, str], secret: str, tmp_path: Path
) -> None:
    """python -m service --once: URL credentials or a bad RELOAD_TOKEN exit 2, value unseen."""
    from tests.support import base_env

    proc = run_cli("--once", "--models-root", str(tmp_path), *args, env=base_env(tmp_path, **env))
    assert proc.returncode == 2, proc.stderr
    assert "configuration error" in proc.stderr
    assert secret not in proc.stderr + proc.stdout
    assert len(proc.stderr.strip().splitlines()) == 1


def test_no_socket_is_opened_for_a_bad_token(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    """The token is checked before any connection: a listener sees no connection at all."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    path = tmp_path / "token"
    path.write_text("a\nb")
    config = make_config(
        reload_url=f"http://127.0.0.1:{listener.getsockname()[1]}/r", reload_token_file=path
    )
    with listener:
        assert Reloader(config).reload(REQUEST).error is not None
        with pytest.raises(TimeoutError):
            listener.accept()
