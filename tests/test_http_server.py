"""service.http_server: real sockets on 127.0.0.1 (and ::1); the bounds hold under abuse."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import gzip
import http.client
import logging
import os
import resource
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from service.errors import ConfigError
from service.health import Health
from service.http_server import (
    DEFAULT_LIMITS,
    Limits,
    MetricsServer,
    WSGIApp,
    bind_error,
    connection_cap,
    make_app,
    parse_head,
    start_server,
)
from service.metrics import Metrics
from tests.support import (
    SidecarProcess,
    base_env,
    http_get,
    parse_metrics,
    run_cli,
    wait_for,
    write_bundle,
)

IDLE_SOCKETS = 1000
SIDECAR_NOFILE = 256  # the real sidecar's soft open-file limit: far below 1,000 sockets
BOUND = 10.0  # seconds: the bound of every wait, never a threshold asserted


@dataclasses.dataclass
class Served:
    server: MetricsServer
    health: Health
    registry: CollectorRegistry

    @property
    def port(self) -> int:
        return self.server.server_port


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    servers: list[MetricsServer] = []

    def start(
        limits: Limits = DEFAULT_LIMITS, addr: str = "127.0.0.1", app: WSGIApp | None = None
    ) -> Served:
        registry = CollectorRegistry()
        Metrics(registry)
        health = Health()
        health.running = True
        server = start_server(addr, 0, app or make_app(registry, health), limits)
        servers.append(server)
        return Served(server, health, registry)

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def clients() -> Iterator[list[socket.socket]]:
    """Client sockets the test opens; all closed at the end."""
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


@pytest.fixture
def nofile() -> Iterator[Callable[[int], None]]:
    """Raise this process's soft RLIMIT_NOFILE to n for the test; restored after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def ensure(n: int) -> None:
        if soft >= n:
            return
        if hard != resource.RLIM_INFINITY and hard < n:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {n}: cannot open the sockets")
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))

    yield ensure
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def get(
    port: int,
    path: str,
    host: str = "127.0.0.1",
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=BOUND)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes and read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=BOUND) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def closed_by_server(sock: socket.socket, timeout: float = BOUND) -> bool:
    """True once the server has closed sock (EOF or reset) within timeout (0: now)."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except (TimeoutError, BlockingIOError):
        return False


def open_idle(port: int, count: int, into: list[socket.socket]) -> None:
    for _ in range(count):
        into.append(socket.create_connection(("127.0.0.1", port), timeout=BOUND))


# -- the endpoints -------------------------------------------------------------------------


def test_metrics_are_prometheus_clients_exposition(serve: Callable[..., Served]) -> None:
    """/metrics serves the registry in the text format, every fixed series present."""
    status, headers, body = get(serve().port, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert parse_metrics(body.decode())[("model_sidecar_polls_total", ())] == 0


def test_metrics_honour_gzip_and_openmetrics(serve: Callable[..., Served]) -> None:
    """Accept-Encoding: gzip and the OpenMetrics Accept header work as prometheus_client does."""
    port = serve().port
    status, headers, body = get(port, "/metrics", headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert b"model_sidecar_polls_total" in gzip.decompress(body)
    accept = "application/openmetrics-text; version=1.0.0"
    status, headers, body = get(port, "/metrics", headers={"Accept": accept})
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


def test_healthz_follows_the_health_verdict(serve: Callable[..., Served]) -> None:
    """/healthz is 200 while running and 503 with the reason once the scheduler stopped."""
    served = serve()
    assert get(served.port, "/healthz")[0] == 200
    served.health.running = False
    status, _headers, body = get(served.port, "/healthz")
    assert (status, body) == (503, b"the scheduler is not running\n")


def test_readyz_is_503_until_ready(serve: Callable[..., Served]) -> None:
    """/readyz says 503 while recovery runs and 200 once ready is set."""
    served = serve()
    assert get(served.port, "/readyz")[:3:2] == (503, b"recovering\n")
    served.health.ready = True
    assert get(served.port, "/readyz")[0] == 200


def test_other_paths_are_404(serve: Callable[..., Served]) -> None:
    """Any other path is a 404 naming the endpoints."""
    status, _headers, body = get(serve().port, "/metricz")
    assert status == 404 and b"/healthz" in body


def test_head_request_has_no_body(serve: Callable[..., Served]) -> None:
    """HEAD /healthz answers the status and length without a body."""
    raw = exchange(serve().port, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"Content-Length: 18" in head
    assert body == b""


def test_ipv6_loopback_works(serve: Callable[..., Served]) -> None:
    """--metrics-addr ::1 serves on the IPv6 loopback as before."""
    if not socket.has_ipv6:
        pytest.skip("this Python has no IPv6 support")
    try:
        served = serve(addr="::1")
    except ConfigError as exc:
        pytest.skip(f"no IPv6 loopback on this host: {exc}")
    assert get(served.port, "/healthz", host="::1")[0] == 200


def test_requests_are_not_logged(
    serve: Callable[..., Served],
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Requests to the endpoints leave no log record and nothing on stderr."""
    caplog.set_level(logging.DEBUG)
    port = serve().port
    for path in ("/metrics", "/healthz", "/readyz", "/nope"):
        get(port, path)
    assert caplog.records == []
    assert capfd.readouterr().err == ""


def test_a_failing_handler_is_a_500_and_the_server_goes_on(
    serve: Callable[..., Served],
) -> None:
    """An exception in the app answers 500 and the next request is served."""
    calls: list[str] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        calls.append(environ["PATH_INFO"])
        if len(calls) == 1:
            raise RuntimeError("boom")
        start_response("200 OK", [])
        return [b"fine"]

    port = serve(app=app).port
    assert get(port, "/a")[0] == 500
    assert get(port, "/b")[:3:2] == (200, b"fine")


def test_an_app_that_answers_garbage_is_a_500(serve: Callable[..., Served]) -> None:
    """No start_response, or a header that is not Latin-1: 500, and the server goes on."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ["PATH_INFO"] == "/header":
            start_response("200 OK", [("X-Name", "\u2603")])
        return [b"body"]

    port = serve(app=app).port
    assert get(port, "/none")[0] == 500
    assert get(port, "/header")[0] == 500
    assert get(port, "/none")[0] == 500


# -- the bounds ----------------------------------------------------------------------------


def test_the_cap_is_a_quarter_of_the_open_file_limit() -> None:
    """cap = min(max_connections, soft RLIMIT_NOFILE / 4), at least 1."""
    assert connection_cap(256, 400) == 100
    assert connection_cap(256, 1 << 20) == 256
    assert connection_cap(256, resource.RLIM_INFINITY) == 256
    assert connection_cap(256, 3) == 1


def test_the_server_takes_its_cap_from_the_process_limit(
    serve: Callable[..., Served], nofile: Callable[[int], None]
) -> None:
    """Started under a soft limit of 400 descriptors, the server holds at most 100."""
    nofile(0)  # only for the restore at the end
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (400, hard))
    assert serve().server.cap == 100


def test_healthz_answers_under_1000_idle_sockets(
    serve: Callable[..., Served],
    clients: list[socket.socket],
    nofile: Callable[[int], None],
) -> None:
    """With 1,000 idle sockets open, /healthz is 200 and the server holds at most its cap."""
    nofile(4096)
    served = serve()
    open_idle(served.port, IDLE_SOCKETS, clients)
    assert get(served.port, "/healthz")[0] == 200
    assert served.server.open_connections <= served.server.cap
    status, _headers, body = get(served.port, "/metrics")
    assert status == 200 and b"model_sidecar_polls_total" in body


def test_connections_past_the_cap_close_the_oldest(
    serve: Callable[..., Served],
    clients: list[socket.socket],
    nofile: Callable[[int], None],
) -> None:
    """Past the cap the oldest idle sockets are closed by the server: at least 1000 - cap."""
    nofile(4096)
    served = serve()
    open_idle(served.port, IDLE_SOCKETS, clients)
    assert get(served.port, "/healthz")[0] == 200  # accepted after all 1,000: they are admitted
    shed = sum(closed_by_server(sock, timeout=0) for sock in clients)
    assert shed >= IDLE_SOCKETS - served.server.cap
    assert closed_by_server(clients[0])


def test_the_connection_after_the_cap_is_served(
    serve: Callable[..., Served],
    clients: list[socket.socket],
) -> None:
    """With the cap of 4 reached by idle sockets, a 5th connection gets /healthz."""
    served = serve(limits=Limits(max_connections=4))
    open_idle(served.port, 4, clients)
    assert get(served.port, "/healthz")[0] == 200
    assert closed_by_server(clients[0])


def test_idle_connections_are_closed_after_the_timeout(
    serve: Callable[..., Served],
    clients: list[socket.socket],
) -> None:
    """A connection that sends nothing is closed by the server once its timeout passed."""
    served = serve(limits=Limits(timeout=0.3))
    open_idle(served.port, 3, clients)
    assert all(closed_by_server(sock) for sock in clients)
    wait_for(lambda: served.server.open_connections == 0, BOUND, "no connection left")


def test_a_slowloris_head_is_cut(serve: Callable[..., Served]) -> None:
    """A head sent a line at a time never completes: cut without an answer at the timeout."""
    served = serve(limits=Limits(timeout=0.5))
    with socket.create_connection(("127.0.0.1", served.port), timeout=BOUND) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        cut = False
        for _ in range(int(BOUND / 0.05)):
            try:
                sock.sendall(b"X-Slow: 1\r\n")
            except (BrokenPipeError, ConnectionResetError):
                cut = True
                break
            sock.settimeout(0.05)
            try:
                if sock.recv(1) == b"":
                    cut = True
                    break
            except TimeoutError:
                continue
            except ConnectionResetError:
                cut = True
                break
        assert cut


def test_an_oversized_head_is_a_431(serve: Callable[..., Served]) -> None:
    """A head longer than max_head without its end is answered 431 and closed."""
    port = serve(limits=Limits(max_head=1024)).port
    raw = exchange(port, b"GET /healthz HTTP/1.1\r\n" + b"X: " + b"a" * 2000)
    assert raw.startswith(b"HTTP/1.1 431 ")


def test_a_scrape_storm_does_not_starve_healthz(serve: Callable[..., Served]) -> None:
    """While 20 threads scrape /metrics, every /healthz and every scrape is a 200."""
    served = serve()
    statuses: list[int] = []
    stop = threading.Event()

    def scrape() -> None:
        for _ in range(200):
            if stop.is_set():
                return
            statuses.append(get(served.port, "/metrics")[0])

    threads = [threading.Thread(target=scrape) for _ in range(20)]
    for thread in threads:
        thread.start()
    try:
        health = [get(served.port, "/healthz")[0] for _ in range(10)]
    finally:
        stop.set()
        for thread in threads:
            thread.join(BOUND * 6)
    assert set(health) == {200}
    assert statuses and set(statuses) == {200}


def blocking_app(release: threading.Event, calls: list[str]) -> WSGIApp:
    """/healthz answers at once; any other path counts its call and waits for release."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ["PATH_INFO"] == "/healthz":
            start_response("200 OK", [])
            return [b"ok"]
        calls.append(environ.get("HTTP_ACCEPT_ENCODING", ""))
        release.wait(BOUND)
        start_response("200 OK", [])
        return [environ.get("HTTP_ACCEPT_ENCODING", "plain").encode()]

    return app


def test_a_hung_metrics_collection_does_not_delay_healthz(
    serve: Callable[..., Served],
) -> None:
    """While a /metrics rendering hangs, /healthz still answers 200."""
    release, calls = threading.Event(), []
    port = serve(app=blocking_app(release, calls)).port
    scrape = threading.Thread(target=get, args=(port, "/metrics"))
    scrape.start()
    try:
        wait_for(lambda: len(calls) == 1, BOUND, "the scrape to start")
        assert get(port, "/healthz")[:3:2] == (200, b"ok")
    finally:
        release.set()
        scrape.join(BOUND)


def test_scrapes_waiting_together_share_one_rendering(serve: Callable[..., Served]) -> None:
    """Scrapes queued behind a rendering are answered by one call per distinct request."""
    release, calls = threading.Event(), []
    served = serve(app=blocking_app(release, calls))
    results: list[tuple[int, bytes]] = []

    def scrape(encoding: str) -> None:
        status, _headers, body = get(served.port, "/metrics", headers={"Accept-Encoding": encoding})
        results.append((status, body))

    first = threading.Thread(target=scrape, args=("first",))
    first.start()
    wait_for(lambda: len(calls) == 1, BOUND, "the first scrape to start")
    waiting = [threading.Thread(target=scrape, args=(enc,)) for enc in ["a"] * 5 + ["b"] * 3]
    for thread in waiting:
        thread.start()
    wait_for(lambda: served.server.queued == 8, BOUND, "the scrapes to queue")
    release.set()
    for thread in [first, *waiting]:
        thread.join(BOUND)
    assert sorted(calls) == ["a", "b", "first"]
    assert sorted(results) == [(200, b"a")] * 5 + [(200, b"b")] * 3 + [(200, b"first")]


def test_no_wake_ups_when_idle(serve: Callable[..., Served]) -> None:
    """With no connection open the loop is blocked: no wake-up in a second of idleness."""
    served = serve()
    get(served.port, "/healthz")
    wait_for(lambda: served.server.open_connections == 0, BOUND, "the probe closed")
    before = served.server.wakeups
    time.sleep(1.0)
    assert served.server.wakeups == before


def test_out_of_descriptors_pauses_accepting_and_recovers(
    serve: Callable[..., Served],
    nofile: Callable[[int], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """EMFILE on accept pauses accepting (no busy loop), warns, and serves once fds return."""
    nofile(0)  # only for the restore at the end
    served = serve()
    client = socket.socket()
    client.settimeout(BOUND)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 64, hard))
    try:
        with contextlib.suppress(OSError):
            while True:
                fillers.append(os.open(os.devnull, os.O_RDONLY))
        client.connect(("127.0.0.1", served.port))  # completed by the kernel's backlog
        before = served.server.wakeups
        time.sleep(1.0)
        during = served.server.wakeups - before
    finally:
        for fd in fillers:
            os.close(fd)
    with client:
        client.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        assert client.recv(4096).startswith(b"HTTP/1.1 200 OK")
    assert during <= 10, f"{during} wake-ups in a second: the loop spins"
    assert any("cannot accept connections" in r.getMessage() for r in caplog.records)


def test_close_stops_the_thread_and_frees_the_port(serve: Callable[..., Served]) -> None:
    """close() ends the loop and closes the listener: the port can be bound again."""
    served = serve()
    served.server.close()
    assert not served.server.thread.is_alive()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", served.port))


# -- hostile input -------------------------------------------------------------------------


@given(st.binary(max_size=2048))
def test_parse_head_never_raises(head: bytes) -> None:
    """Any bytes parse to a request or to None (a 400), never to an exception."""
    request = parse_head(head)
    if request is not None:
        assert request.target.startswith("/") and request.version.startswith("HTTP/1.")


@pytest.fixture(scope="module")
def shared_server() -> Iterator[MetricsServer]:
    registry = CollectorRegistry()
    Metrics(registry)
    health = Health()
    health.running = True
    server = start_server("127.0.0.1", 0, make_app(registry, health))
    yield server
    server.close()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=1024) | st.text(max_size=300).map(lambda s: s.encode()))
def test_hostile_heads_get_an_answer_and_do_not_hurt(
    shared_server: MetricsServer, head: bytes
) -> None:
    """Arbitrary bytes then a blank line: an HTTP status or a close; /healthz still 200."""
    raw = exchange(shared_server.server_port, head + b"\r\n\r\n")
    assert raw == b"" or raw.startswith(b"HTTP/1.1 ")
    assert get(shared_server.server_port, "/healthz")[0] == 200


# -- bind errors ---------------------------------------------------------------------------


def test_port_in_use_is_a_config_error_naming_the_setting() -> None:
    """A port another socket listens on: ConfigError naming METRICS_PORT, address and port."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(ConfigError) as caught:
            start_server("127.0.0.1", port, make_app(CollectorRegistry(), Health()))
    assert str(caught.value) == (
        f"METRICS_PORT/--metrics-port: 127.0.0.1:{port} is already in use (another process "
        "listens there); choose another port or 0 to disable the server"
    )


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (
            errno.EADDRNOTAVAIL,
            "METRICS_ADDR/--metrics-addr: 10.9.8.7 is not an address of this host",
        ),
        (errno.EACCES, "METRICS_PORT/--metrics-port: listening on 10.9.8.7:80 is not permitted"),
        (errno.EAFNOSUPPORT, "METRICS_ADDR/--metrics-addr: 10.9.8.7 is an IPv6 address"),
        (errno.EINVAL, "METRICS_ADDR/METRICS_PORT: cannot listen on 10.9.8.7:80: "),
    ],
)
def test_other_bind_errors_name_the_setting(code: int, words: str) -> None:
    """Each bind failure is a one-line ConfigError naming the setting (no socket is bound)."""
    message = str(bind_error("10.9.8.7", 80, OSError(code, os.strerror(code))))
    assert message.startswith(words)
    assert "\n" not in message


def test_an_ipv6_address_is_bracketed_in_messages() -> None:
    """[::1]:9177, not ::1:9177."""
    message = str(bind_error("::1", 9177, OSError(errno.EADDRINUSE, "in use")))
    assert "[::1]:9177 is already in use" in message


def test_cli_exits_2_when_the_port_is_in_use(models: Path) -> None:
    """`run` with a taken --metrics-port exits 2 with the one-line message on stderr."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        result = run_cli(
            "run",
            "--no-reload",
            "--metrics-addr",
            "127.0.0.1",
            "--metrics-port",
            str(port),
            env=base_env(models),
            timeout=60,
        )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"forecaster-sidecar: METRICS_PORT/--metrics-port: 127.0.0.1:{port} is already in use "
        "(another process listens there); choose another port or 0 to disable the server"
    )


# -- the real sidecar ----------------------------------------------------------------------


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def soft_nofile_of(pid: int) -> int:
    line = next(
        ln
        for ln in Path(f"/proc/{pid}/limits").read_text().splitlines()
        if ln.startswith("Max open files")
    )
    return int(line.split()[3])


def test_the_sidecar_serves_and_promotes_under_1000_idle_sockets(
    models: Path,
    start_daemon: Callable[..., SidecarProcess],
    clients: list[socket.socket],
    nofile: Callable[[int], None],
) -> None:
    """The real sidecar at 256 descriptors: 1,000 idle sockets leave /healthz 200, its
    descriptors below the limit and promotion working (the EMFILE wedge of issue 10)."""
    nofile(4096)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (SIDECAR_NOFILE, hard))  # the sidecar's
    try:
        daemon = start_daemon(
            models, "run", "--no-reload", "--metrics-addr", "127.0.0.1", "--poll-interval", "5"
        )
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))  # the test's 1,000 sockets
    daemon.wait_ready()
    assert soft_nofile_of(daemon.proc.pid) == SIDECAR_NOFILE
    cap = connection_cap(Limits().max_connections, SIDECAR_NOFILE)
    before = open_fds(daemon.proc.pid)
    open_idle(daemon.port, IDLE_SOCKETS, clients)
    assert http_get(daemon.url + "/healthz", timeout=BOUND)[0] == 200
    # a pass may hold a directory or a lock file open while we count: 4 spare
    assert open_fds(daemon.proc.pid) <= before + cap + 4 < SIDECAR_NOFILE
    write_bundle(models / "staging", {"model.bin": b"weights"}, version="v1")
    daemon.wait_metric("model_sidecar_current_version_info", lambda v: v == 1, version="v1")
    assert os.readlink(models / "current") == "versions/v1"
    assert daemon.stop() == 0
