"""The HTTP server for /metrics, /healthz and /readyz (SPEC section 10): bounded by design.

One thread runs a ``selectors`` loop that owns every socket, so an idle connection costs
a descriptor and a few hundred bytes, never a thread. The bounds:

- at most ``cap`` open connections, ``cap = min(max_connections, RLIMIT_NOFILE soft / 4)``:
  three quarters of the descriptors stay for the promotion work. When the cap is reached
  a new connection closes the oldest one, so idle sockets cannot starve a probe;
- every connection must send its request head (at most ``max_head`` bytes) and take its
  response within ``timeout`` seconds of being accepted: idle and slowloris connections
  are cut. After its response a connection is half-closed and waits, within the same
  deadline, for the client to close;
- one request per connection (``Connection: close``). /healthz and /readyz are answered
  in the loop; every other request goes to one renderer thread, which answers requests
  alike that wait together with one rendering: a scrape storm neither delays probes nor
  multiplies the work. Its queue holds at most one request per open connection;
- a listen backlog of ``backlog`` for bursts of scrapers and probes;
- when ``accept`` fails for want of descriptors (EMFILE), accepting pauses briefly instead
  of spinning on a listening socket that stays readable.

When nothing happens both threads are blocked in the kernel without a timeout: idle CPU
is zero. Requests are not logged.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import re
import resource
import selectors
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import unquote

from prometheus_client import CollectorRegistry, make_wsgi_app

from service.errors import ConfigError
from service.health import Health

log = logging.getLogger(__name__)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

ACCEPT_BATCH = 16  # accepts per wake-up, so reads of accepted sockets interleave
ACCEPT_PAUSE_SECONDS = 0.5  # after EMFILE: retry accepting this much later
WARN_EVERY_SECONDS = 60.0
_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_HEAD_END = re.compile(rb"\r?\n\r?\n")
INLINE_PATHS = frozenset({"/healthz", "/readyz"})  # cheap by contract: answered in the loop
COALESCE_ON = ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "HTTP_ACCEPT", "HTTP_ACCEPT_ENCODING")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


@dataclass(frozen=True)
class Limits:
    """The server's bounds; see the module docstring."""

    max_connections: int = 256
    timeout: float = 10.0
    max_head: int = 8192
    backlog: int = 1024


DEFAULT_LIMITS = Limits()


def connection_cap(max_connections: int, soft_nofile: int) -> int:
    """At most a quarter of the open-file limit: the rest stays for the promotion work."""
    if soft_nofile == resource.RLIM_INFINITY or soft_nofile < 0:
        return max(1, max_connections)
    return max(1, min(max_connections, soft_nofile // 4))


# -- deciding: parsing a request head and rendering a response ----------------------------


class Request(NamedTuple):
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]


def head_end(buffer: bytes | bytearray) -> int:
    """The length of the request head in buffer including its blank line, or -1."""
    match = _HEAD_END.search(buffer)
    return -1 if match is None else match.end()


def parse_head(head: bytes) -> Request | None:
    """The request line and headers of an HTTP/1.x head; None when it is malformed."""
    lines = head.decode("latin-1").split("\n")
    parts = lines[0].rstrip("\r").split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]):
        return None
    method, target, version = parts
    if not target.startswith("/") or not version.startswith("HTTP/1."):
        return None
    headers = []
    for line in (raw.rstrip("\r") for raw in lines[1:]):
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            return None
        headers.append((name, value.strip(" \t")))
    return Request(method, target, version, headers)


def build_environ(request: Request, server_name: str, server_port: int) -> dict[str, Any]:
    path, _, query = request.target.partition("?")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote(path, "latin-1"),
        "QUERY_STRING": query,
        "SERVER_NAME": server_name,
        "SERVER_PORT": str(server_port),
        "SERVER_PROTOCOL": request.version,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,  # the loop and the renderer both call the app
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in request.headers:
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


def render(
    status: str, headers: Iterable[tuple[str, str]], body: bytes, head_only: bool = False
) -> bytes:
    """An HTTP/1.1 response that closes the connection."""
    kept = [(k, v) for k, v in headers if k.lower() not in ("content-length", "connection")]
    lines = [
        f"HTTP/1.1 {status}",
        *(f"{k}: {v}" for k, v in kept),
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


def plain(status: str, text: str) -> bytes:
    return render(status, [("Content-Type", "text/plain; charset=utf-8")], text.encode())


def call_app(app: WSGIApp, environ: dict[str, Any]) -> bytes:
    """Run the WSGI app for one request; its response rendered, or a 500."""
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], _exc_info: Any = None
    ) -> Callable[[bytes], None]:
        started.append((status, headers))
        return lambda _data: None

    try:
        chunks = app(environ, start_response)
        body = b"".join(chunks)
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
        status, headers = started[-1]
        return render(status, headers, body, head_only=environ["REQUEST_METHOD"] == "HEAD")
    except Exception:  # the app, or a response that is not HTTP (no status, bad header)
        log.exception("the handler of %s failed", environ.get("PATH_INFO"))
        return plain("500 Internal Server Error", "internal error\n")


def make_app(registry: CollectorRegistry, health: Health) -> WSGIApp:
    """/metrics from prometheus_client, /healthz and /readyz from health; 404 elsewhere."""
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            body: Iterable[bytes] = metrics_app(environ, start_response)
            return body
        if path == "/healthz":
            verdict = health.verdict()
            return _text(start_response, verdict.ok, f"{verdict.why}\n")
        if path == "/readyz":
            ready = health.ready
            return _text(start_response, ready, "ready\n" if ready else "recovering\n")
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"see /metrics, /healthz, /readyz\n"]

    return app


def _text(start_response: Callable[..., Any], ok: bool, body: str) -> list[bytes]:
    status = "200 OK" if ok else "503 Service Unavailable"
    start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
    return [body.encode()]


# -- doing: the listening socket and the loop ---------------------------------------------


def _where(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def bind_error(addr: str, port: int, exc: OSError) -> ConfigError:
    """A one-line message naming the address, the port and the setting to change."""
    where = _where(addr, port)
    disable = "or 0 to disable the server"
    if isinstance(exc, socket.gaierror):
        return ConfigError(
            f"METRICS_ADDR/--metrics-addr: cannot resolve {addr!r} "
            f"({exc.strerror}); use an IP address such as 0.0.0.0 or ::"
        )
    if exc.errno == errno.EADDRINUSE:
        return ConfigError(
            f"METRICS_PORT/--metrics-port: {where} is already in use (another "
            f"process listens there); choose another port {disable}"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return ConfigError(
            f"METRICS_ADDR/--metrics-addr: {addr} is not an address of this "
            f"host, so {where} cannot be served; use 0.0.0.0, :: or one of "
            f"this host's addresses"
        )
    if exc.errno == errno.EACCES:
        return ConfigError(
            f"METRICS_PORT/--metrics-port: listening on {where} is not "
            f"permitted to this process (ports below 1024 need privileges); "
            f"choose a port from 1024 {disable}"
        )
    if exc.errno == errno.EAFNOSUPPORT:
        return ConfigError(
            f"METRICS_ADDR/--metrics-addr: {addr} is an IPv6 address and "
            f"this host has no IPv6; use 0.0.0.0 or an IPv4 address"
        )
    return ConfigError(
        f"METRICS_ADDR/METRICS_PORT: cannot listen on {where}: {exc.strerror or exc}"
    )


def listen(addr: str, port: int, backlog: int) -> socket.socket:
    """A non-blocking listening socket; bind failures become a ConfigError."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise bind_error(addr, port, exc) from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restarts in TIME_WAIT
        sock.bind((addr, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise bind_error(addr, port, exc) from exc
    sock.setblocking(False)
    return sock


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    deadline: float
    inbuf: bytearray = field(default_factory=bytearray)
    events: int = 0  # what the selector watches; 0 while the renderer has it
    out: memoryview | None = None  # the response not yet sent
    draining: bool = False  # response sent: discard input until the client closes


def coalesce_key(environ: dict[str, Any]) -> tuple[str, ...]:
    """What a response of make_app's /metrics depends on: requests alike share one."""
    return tuple(str(environ.get(name, "")) for name in COALESCE_ON)


def render_batch(app: WSGIApp, batch: dict[_Conn, dict[str, Any]]) -> list[tuple[_Conn, bytes]]:
    """One call of the app per distinct request in batch; its response for each alike."""
    groups: dict[tuple[str, ...], list[_Conn]] = {}
    environs: dict[tuple[str, ...], dict[str, Any]] = {}
    for conn, environ in batch.items():
        key = coalesce_key(environ)
        groups.setdefault(key, []).append(conn)
        environs.setdefault(key, environ)
    done: list[tuple[_Conn, bytes]] = []
    for key, conns in groups.items():
        response = call_app(app, environs[key])
        done.extend((conn, response) for conn in conns)
    return done


class _Renderer:
    """One thread runs the app for every path but the probes', off the loop: a probe never
    waits behind scrapes, and scrapes waiting together cost one rendering. At most one
    pending request per open connection: the queue is bounded by the cap."""

    def __init__(self, app: WSGIApp, deliver: Callable[[list[tuple[_Conn, bytes]]], None]):
        self._app = app
        self._deliver = deliver
        self._cond = threading.Condition()
        self._pending: dict[_Conn, dict[str, Any]] = {}
        self._closing = False
        self.thread = threading.Thread(target=self._run, name="metrics-render", daemon=True)

    def __len__(self) -> int:
        return len(self._pending)

    def submit(self, conn: _Conn, environ: dict[str, Any]) -> None:
        with self._cond:
            self._pending[conn] = environ
            self._cond.notify()

    def cancel(self, conn: _Conn) -> None:
        with self._cond:
            self._pending.pop(conn, None)

    def close(self, timeout: float) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self.thread.is_alive():
            self.thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()  # no timeout: no wake-up while idle
                if self._closing:
                    return
                batch, self._pending = self._pending, {}
            self._deliver(render_batch(self._app, batch))


class MetricsServer:
    """The loop and its sockets; start it with ``start_server``, stop it with ``close``."""

    def __init__(self, listener: socket.socket, app: WSGIApp, limits: Limits, cap: int) -> None:
        self.limits = limits
        self.cap = cap
        self.server_address: tuple[Any, ...] = listener.getsockname()
        self.server_port: int = self.server_address[1]
        self._listener = listener
        self._app = app
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)  # a full pipe already means "wake up"
        self._conns: dict[int, _Conn] = {}  # accept order, which is deadline order
        self._rendered: deque[tuple[_Conn, bytes]] = deque()
        self._renderer = _Renderer(app, self._deliver)
        self._paused_until: float | None = None
        self._last_warning = -WARN_EVERY_SECONDS
        self._closing = False
        self.wakeups = 0  # returns from select(): stays put while nothing happens
        self._sel.register(listener, selectors.EVENT_READ, "listener")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self.thread = threading.Thread(target=self._serve, name="metrics-http", daemon=True)

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    @property
    def queued(self) -> int:
        """Requests waiting for the renderer (not counting the one it renders)."""
        return len(self._renderer)

    def start(self) -> None:
        self._renderer.thread.start()
        self.thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the threads and close every socket (they are daemon threads: optional)."""
        self._closing = True
        self._wake()
        if self.thread.is_alive():
            self.thread.join(timeout)
        self._renderer.close(timeout)
        self._wake_w.close()

    def server_close(self) -> None:
        """socketserver's name for close(), for callers written against it."""
        self.close()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake-up is pending) or closed
            self._wake_w.send(b"x")

    def _deliver(self, rendered: list[tuple[_Conn, bytes]]) -> None:
        """From the renderer's thread: hand responses to the loop."""
        self._rendered.extend(rendered)
        self._wake()

    def _serve(self) -> None:
        try:
            while not self._closing:
                events = self._sel.select(self._timeout(time.monotonic()))
                self.wakeups += 1
                now = time.monotonic()
                for key, _mask in events:
                    self._dispatch(key.data, now)
                self._expire(now)
        except Exception:
            # a bug, not a request: stop serving so that the liveness probe fails loudly
            log.critical("the metrics server stopped", exc_info=True)
            raise
        finally:
            self._teardown()

    def _timeout(self, now: float) -> float | None:
        """Until the next deadline; None (no wake-up at all) when nothing is pending."""
        times = [] if self._paused_until is None else [self._paused_until]
        if self._conns:
            times.append(next(iter(self._conns.values())).deadline)
        return max(0.0, min(times) - now) if times else None

    def _dispatch(self, data: Any, now: float) -> None:
        if data == "listener":
            self._accept(now)
        elif data == "wake":
            self._take_rendered()
        elif self._is_open(data):  # not shed earlier in this round
            conn: _Conn = data
            if conn.out is not None:
                self._write(conn)
            elif conn.draining:
                self._drain(conn)
            else:
                self._read(conn)

    def _is_open(self, conn: _Conn) -> bool:
        return self._conns.get(conn.sock.fileno()) is conn  # a closed socket's fileno is -1

    def _take_rendered(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass
        while self._rendered:
            conn, response = self._rendered.popleft()
            if self._is_open(conn):
                self._respond(conn, response)

    def _expire(self, now: float) -> None:
        while self._conns:
            oldest = next(iter(self._conns.values()))
            if oldest.deadline > now:
                break
            self._close(oldest)
        if self._paused_until is not None and now >= self._paused_until:
            self._paused_until = None
            self._sel.register(self._listener, selectors.EVENT_READ, "listener")

    def _accept(self, now: float) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _peer = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_DESCRIPTORS:
                    self._pause_accepting(now, exc)
                    return
                continue  # the peer went away before accept (ECONNABORTED and the like)
            self._admit(sock, now)

    def _admit(self, sock: socket.socket, now: float) -> None:
        if len(self._conns) >= self.cap:
            self._close(next(iter(self._conns.values())))
        sock.setblocking(False)
        conn = _Conn(sock, now + self.limits.timeout)
        self._conns[sock.fileno()] = conn
        self._watch(conn, selectors.EVENT_READ)

    def _watch(self, conn: _Conn, events: int) -> None:
        if events == conn.events:
            return
        if events == 0:
            self._sel.unregister(conn.sock)
        elif conn.events == 0:
            self._sel.register(conn.sock, events, conn)
        else:
            self._sel.modify(conn.sock, events, conn)
        conn.events = events

    def _pause_accepting(self, now: float, exc: OSError) -> None:
        """The listener stays readable while accept fails: stop watching it for a while."""
        self._sel.unregister(self._listener)
        self._paused_until = now + ACCEPT_PAUSE_SECONDS
        if now - self._last_warning >= WARN_EVERY_SECONDS:
            self._last_warning = now
            log.warning(
                "metrics server cannot accept connections (%s) with %d open; retrying in %g s",
                exc.strerror,
                len(self._conns),
                ACCEPT_PAUSE_SECONDS,
            )

    def _read(self, conn: _Conn) -> None:
        data = _recv(conn, self.limits.max_head + 1 - len(conn.inbuf))
        if data is None:
            return
        if not data:
            self._close(conn)
            return
        conn.inbuf += data
        end = head_end(conn.inbuf)
        if end >= 0:
            self._route(conn, bytes(conn.inbuf[:end]))
        elif len(conn.inbuf) > self.limits.max_head:
            self._respond(
                conn, plain("431 Request Header Fields Too Large", "request head too large\n")
            )

    def _route(self, conn: _Conn, head: bytes) -> None:
        """Probes are answered here and now; anything else by the renderer."""
        request = parse_head(head)
        if request is None:
            self._respond(conn, plain("400 Bad Request", "malformed request\n"))
            return
        environ = build_environ(request, str(self.server_address[0]), self.server_port)
        if environ["PATH_INFO"] in INLINE_PATHS:
            self._respond(conn, call_app(self._app, environ))
        else:
            self._watch(conn, 0)  # input arriving meanwhile must not wake the loop
            self._renderer.submit(conn, environ)

    def _respond(self, conn: _Conn, response: bytes) -> None:
        conn.out = memoryview(response)
        conn.inbuf = bytearray()
        self._watch(conn, selectors.EVENT_WRITE)
        self._write(conn)

    def _write(self, conn: _Conn) -> None:
        assert conn.out is not None
        try:
            sent = conn.sock.send(conn.out)
        except BlockingIOError:
            return
        except OSError:
            self._close(conn)
            return
        conn.out = conn.out[sent:] if sent < len(conn.out) else None
        if conn.out is None:
            self._linger(conn)

    def _linger(self, conn: _Conn) -> None:
        """Half-close, then wait for the client's close: closing with unread input (a
        too long head, a body) would reset the connection and lose the response."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        conn.draining = True
        self._watch(conn, selectors.EVENT_READ)

    def _drain(self, conn: _Conn) -> None:
        if _recv(conn, 65536) == b"":
            self._close(conn)

    def _close(self, conn: _Conn) -> None:
        self._conns.pop(conn.sock.fileno(), None)
        if conn.events:
            self._sel.unregister(conn.sock)
        else:
            self._renderer.cancel(conn)
        conn.sock.close()

    def _teardown(self) -> None:
        for conn in list(self._conns.values()):
            self._close(conn)
        self._sel.close()
        self._listener.close()
        self._wake_r.close()


def start_server(
    addr: str, port: int, app: WSGIApp, limits: Limits = DEFAULT_LIMITS
) -> MetricsServer:
    """Listen on addr:port and serve app from a daemon thread; raise ConfigError when the
    address cannot be bound. The bound port is ``server.server_port``."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    server = MetricsServer(
        listen(addr, port, limits.backlog),
        app,
        limits,
        connection_cap(limits.max_connections, soft),
    )
    server.start()
    return server


def _recv(conn: _Conn, size: int) -> bytes | None:
    """Up to size bytes; b"" when the peer closed (or the socket failed), None when
    nothing is there yet."""
    try:
        return conn.sock.recv(size)
    except BlockingIOError:
        return None
    except OSError:
        return b""
