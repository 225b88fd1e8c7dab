"""The metrics of SPEC section 10 and the HTTP server for /metrics, /healthz and /readyz."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

from service import __version__
from service.errors import PROMOTION_FAILURE_REASONS, RELOAD_FAILURE_REASONS

PROMOTION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
RELOAD_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
HEALTH_FLOOR_SECONDS = 60.0


class Metrics:
    """Every metric of the sidecar on one registry, fixed label values present from 0."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
            return Counter(name, doc, list(labels), registry=registry)

        def gauge(name: str, doc: str, labels: Iterable[str] = ()) -> Gauge:
            return Gauge(name, doc, list(labels), registry=registry)

        self.promotions = counter("model_sidecar_promotions_total",
                                  "Staged bundles taken, by outcome.", ["outcome"])
        self.promotion_failures = counter("model_sidecar_promotion_failures_total",
                                          "Failed promotions by reason.", ["reason"])
        self.promotion_duration = Histogram(
            "model_sidecar_promotion_duration_seconds",
            "Time from claiming a bundle to the switch of current.",
            buckets=PROMOTION_BUCKETS, registry=registry)
        self.reload_requests = counter(
            "model_sidecar_reload_requests_total",
            "Reload HTTP requests sent (each retry is one).", ["outcome"])
        self.reload_failures = counter("model_sidecar_reload_failures_total",
                                       "Reloads that failed after their retries.", ["reason"])
        self.reload_duration = Histogram(
            "model_sidecar_reload_duration_seconds",
            "Time of a reload, retries and verification included.",
            buckets=RELOAD_BUCKETS, registry=registry)
        self.rollbacks = counter("model_sidecar_rollbacks_total", "Rollbacks by trigger.",
                                 ["trigger"])
        self.current_version = gauge("model_sidecar_current_version_info",
                                     "The version current points to (value 1).", ["version"])
        self.last_success = gauge("model_sidecar_last_success_timestamp_seconds",
                                  "Unix time of the last successful promotion.")
        self.last_poll = gauge("model_sidecar_last_poll_timestamp_seconds",
                               "Unix time of the end of the last poll.")
        self.poll_interval = gauge("model_sidecar_poll_interval_seconds",
                                   "The resolved poll interval.")
        self.polls = counter("model_sidecar_polls_total", "Polls run.")
        self.staged_pending = gauge("model_sidecar_staged_pending",
                                    "1 while a bundle is staged with READY and not yet taken.")
        self.build_info = gauge("model_sidecar_build_info", "Sidecar build (value 1).",
                                ["version"])
        self._init_labels()

    def _init_labels(self) -> None:
        for outcome in ("success", "rejected", "error"):
            self.promotions.labels(outcome)
        for reason in PROMOTION_FAILURE_REASONS:
            self.promotion_failures.labels(reason)
        for outcome in ("success", "failure"):
            self.reload_requests.labels(outcome)
        for reason in RELOAD_FAILURE_REASONS:
            self.reload_failures.labels(reason)
        for trigger in ("manual", "reload_failure"):
            self.rollbacks.labels(trigger)
        self.build_info.labels(__version__).set(1)

    def set_current(self, version: str | None) -> None:
        self.current_version.clear()
        if version is not None:
            self.current_version.labels(version).set(1)


@dataclass
class Health:
    """What /healthz and /readyz report; written by the scheduler, read by the server."""

    clock: Callable[[], float] = time.time
    started: float = field(default_factory=time.time)
    running: bool = False
    ready: bool = False
    last_poll: float | None = None
    interval: float = 30.0

    def healthy(self) -> bool:
        reference = self.last_poll if self.last_poll is not None else self.started
        limit = max(3 * self.interval, HEALTH_FLOOR_SECONDS)
        return self.running and self.clock() - reference <= limit


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _plain(start_response: Callable[..., Any], status: str, body: str) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
    return [body.encode()]


def make_app(registry: CollectorRegistry, health: Health) -> WSGIApp:
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            body: Iterable[bytes] = metrics_app(environ, start_response)
            return body
        if path in ("/healthz", "/readyz"):
            ok = health.healthy() if path == "/healthz" else health.ready
            return _plain(start_response, "200 OK" if ok else "503 Service Unavailable",
                          "ok\n" if ok else "not ok\n")
        return _plain(start_response, "404 Not Found", "see /metrics, /healthz, /readyz\n")

    return app


class _SilentHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Requests to the endpoints are not logged (SPEC section 10)."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _ThreadingServer6(_ThreadingServer):
    address_family = socket.AF_INET6


def start_server(addr: str, port: int, app: WSGIApp) -> tuple[WSGIServer, threading.Thread]:
    """Serve app on addr:port in a daemon thread; the bound port is server.server_port."""
    server_class = _ThreadingServer6 if ":" in addr else _ThreadingServer
    server = make_server(addr, port, app, server_class, _SilentHandler)
    # serve_forever wakes every poll_interval to check for shutdown(); the default 0.5 s
    # is 7,200 idle wake-ups an hour. The server is never shut down (a daemon thread, it
    # ends with the process), so it may block until a request comes.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": None},
                              name="metrics", daemon=True)
    thread.start()
    return server, thread
