"""service.oci.check: the source check on http.client, its connection and its bounds.

The registries here are small scripted servers on 127.0.0.1 where the behaviour under
test is one that Debian's docker-registry cannot be made to show (closing kept
connections, dribbling or endless answers); the real registry is used everywhere else.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from registry import Registry

from service.oci.check import SourceCheck
from service.oci.protocol import RegistryError
from tests.support import serve_http

DIGEST = "sha256:" + "cd" * 32
REPO = "models/forecaster"


class Recorder:
    """A keep-alive HTTP/1.1 registry answering every HEAD with DIGEST; it records the
    client port of each request (one port = one connection)."""

    def __init__(self, close_after_answer: bool = False) -> None:
        self.ports: list[int] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_HEAD(self) -> None:
                outer.ports.append(self.client_address[1])
                self.send_response(200)
                self.send_header("Docker-Content-Digest", DIGEST)
                self.send_header("Content-Length", "0")
                self.end_headers()
                if close_after_answer:  # as a registry's idle timeout does, without notice
                    self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = serve_http(Handler)
        self.host = f"127.0.0.1:{self.httpd.server_port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def recorder() -> Iterator[Callable[..., Recorder]]:
    made: list[Recorder] = []

    def make(**kwargs: bool) -> Recorder:
        made.append(Recorder(**kwargs))
        return made[-1]

    yield make
    for server in made:
        server.close()


def check_of(host: str, timeout: tuple[float, float] = (5.0, 30.0)) -> SourceCheck:
    return SourceCheck(host, REPO, insecure=frozenset({host}), timeout=timeout)


def test_checks_share_one_kept_alive_connection(recorder: Callable[..., Recorder]) -> None:
    """Five checks make five requests on one connection (no handshake per check)."""
    server = recorder()
    check = check_of(server.host)
    digests = {check.head_manifest("stable").digest for _ in range(5)}
    assert digests == {DIGEST}
    assert len(server.ports) == 5 and len(set(server.ports)) == 1


def test_connection_closed_by_the_registry_is_replaced(recorder: Callable[..., Recorder]) -> None:
    """A kept connection the registry closed between checks is replaced, and the check
    succeeds: no failure is counted for a registry's idle timeout."""
    server = recorder(close_after_answer=True)
    check = check_of(server.host)
    assert [check.head_manifest("stable").digest for _ in range(3)] == [DIGEST] * 3
    assert len(set(server.ports)) == 3


def test_registry_gone_fails_the_check_with_connection(recorder: Callable[..., Recorder]) -> None:
    """A registry that stopped answering: reason connection, naming the registry."""
    server = recorder(close_after_answer=True)
    check = check_of(server.host)
    check.head_manifest("stable")
    server.close()
    with pytest.raises(RegistryError, match=server.host) as info:
        check.head_manifest("stable")
    assert info.value.reason == "connection"


@contextlib.contextmanager
def raw_server(answer: Callable[[BaseHTTPRequestHandler], None]) -> Iterator[str]:
    """A server that reads one request and then runs ``answer`` on its socket."""

    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            answer(self)

        def log_message(self, *args: object) -> None:
            pass

    httpd = serve_http(Handler)
    try:
        yield f"127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def dribble(handler: BaseHTTPRequestHandler) -> None:
    """A status line, then one header byte every 0.2 s (each read is quick: only the
    whole answer is slow), for at most 60 s."""
    handler.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
    for _ in range(300):
        try:
            handler.wfile.write(b"a")
            handler.wfile.flush()
        except OSError:
            return
        time.sleep(0.2)


def endless_headers(handler: BaseHTTPRequestHandler) -> None:
    """Header lines of 60,000 bytes without end: under http.client's own limits (65,536
    bytes a line, 100 lines) they would still be 6 MB; at most 64 MiB."""
    handler.wfile.write(b"HTTP/1.1 200 OK\r\n")
    for n in itertools.islice(itertools.count(), 1_000):
        try:
            handler.wfile.write(b"X-H%d: %s\r\n" % (n, b"v" * 60_000))
        except OSError:
            return


@pytest.mark.parametrize(
    ("answer", "message"),
    [(dribble, "longer than the read timeout"), (endless_headers, "longer than")],
    ids=["dribbling", "endless-headers"],
)
def test_an_answer_that_never_ends_fails_the_check(
    answer: Callable[[BaseHTTPRequestHandler], None], message: str
) -> None:
    """A registry that dribbles its answer, or sends headers without end, ends the check
    (reason connection) instead of holding the pull job or filling memory."""
    with raw_server(answer) as host:
        check = check_of(host, timeout=(1.0, 1.0))
        with pytest.raises(RegistryError, match=message) as info:
            check.head_manifest("stable")
        assert info.value.reason == "connection"


def test_check_of_a_real_registry_names_the_pushed_digest(
    registry: Registry, tmp_path: Path
) -> None:
    """Against docker-registry: a pushed tag's digest; a tag never pushed is not_found."""
    from service.oci.client import RegistryClient
    from service.oci.push import push_bundle

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.bin").write_bytes(b"weights")
    pusher = RegistryClient(
        registry.host, REPO, insecure=frozenset({registry.host}), actions="pull,push"
    )
    pushed = push_bundle(pusher, "stable", bundle)
    check = check_of(registry.host)
    assert check.head_manifest("stable").digest == pushed.digest
    with pytest.raises(RegistryError) as info:
        check.head_manifest("never-pushed")
    assert info.value.reason == "not_found"


WATCHED = r"""
import os, signal, sys, threading, time
from prometheus_client import REGISTRY
from service.cli import main

def sample(name):
    return REGISTRY.get_sample_value(name) or 0

def watch(wanted):
    for _ in range(600):  # 60 s at most
        if sample("model_sidecar_source_checks_total") >= wanted:
            break
        time.sleep(0.1)
    print("checks", int(sample("model_sidecar_source_checks_total")),
          "up_to_date", int(sample("model_sidecar_source_up_to_date")),
          "requests", "requests" in sys.modules, "urllib3" in sys.modules, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=watch, args=(int(sys.argv[1]),), daemon=True).start()
sys.exit(main(["--no-reload"]))
"""


def run_watched(env: dict[str, str], checks: int) -> str:
    """The daemon in a process that reports its checks and imports after ``checks``."""
    import subprocess
    import sys

    from tests.support import ROOT

    out = subprocess.run(
        [sys.executable, "-c", WATCHED, str(checks)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return next(ln for ln in out.stdout.splitlines() if ln.startswith("checks"))


def test_idle_sidecar_following_a_tag_never_imports_requests(
    registry: Registry, models: Path, tmp_path: Path
) -> None:
    """A sidecar whose tag names the version it already runs makes its checks without
    importing requests or urllib3 (idle RSS); nor did the first one, which pulled."""
    from service.oci.client import RegistryClient
    from service.oci.push import push_bundle
    from tests.support import base_env

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.bin").write_bytes(b"weights")
    pusher = RegistryClient(
        registry.host, REPO, insecure=frozenset({registry.host}), actions="pull,push"
    )
    push_bundle(pusher, "stable", bundle)
    env = base_env(
        models,
        SOURCE=f"oci://{registry.host}/{REPO}:stable",
        SOURCE_INSECURE=registry.host,
        SOURCE_POLL_SECONDS="5",
        METRICS_PORT="0",
        POLL_DEFAULT="1",
        REGISTRY_AUTH_FILE=str(tmp_path / "none.json"),
    )
    first = run_watched(env, checks=3)  # pulled at the first, promoted, up to date by the third
    assert first == "checks 3 up_to_date 1 requests False False", first
    assert run_watched(env, checks=2) == "checks 2 up_to_date 1 requests False False"
