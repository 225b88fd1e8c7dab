"""Wiring: builds the objects of a run from the configuration and starts them."""

from __future__ import annotations

import logging
import time

from prometheus_client import REGISTRY, CollectorRegistry, disable_created_metrics

from service import __version__
from service.config import Config
from service.errors import RollbackError
from service.jobs.promote import Promoter
from service.metrics import Health, Metrics, make_app, start_server
from service.reload import Reloader

log = logging.getLogger(__name__)


def build_promoter(config: Config, registry: CollectorRegistry) -> Promoter:
    # *_created series double the exposition and no panel uses them
    disable_created_metrics()  # type: ignore[no-untyped-call]
    return Promoter(config, Metrics(registry), Reloader(config))


def log_start(config: Config) -> None:
    log.info("forecaster-sidecar %s starting with %s", __version__, config.redacted())
    if config.reload_token_file is not None and not config.reload_token_file.exists():
        log.warning("RELOAD_TOKEN_FILE %s does not exist yet: reloads fail until it does",
                    config.reload_token_file)


def run_once(config: Config, registry: CollectorRegistry | None = None) -> int:
    """One pass (recovery, promotion, pending reload); exit 1 when its work failed."""
    log_start(config)
    promoter = build_promoter(config, registry or CollectorRegistry())
    result = promoter.run_pass(wait=True)
    log.info("single pass done: %s%s", result.outcome,
             " (reload failed)" if result.reload_failed else "")
    return 1 if result.failed else 0


def run_daemon(config: Config, registry: CollectorRegistry = REGISTRY) -> int:
    from service.scheduler import Daemon

    log_start(config)
    promoter = build_promoter(config, registry)
    health = Health(clock=time.time)
    daemon = Daemon(promoter, promoter.metrics, health, time.time)
    server = None
    if config.metrics_port:
        server, _thread = start_server(config.metrics_addr, config.metrics_port,
                                       make_app(registry, health))
        log.info("serving /metrics, /healthz, /readyz on %s:%d", config.metrics_addr,
                 server.server_port)
    watcher = None
    if config.watch:
        from service.watch import start_watch

        watcher = daemon.watch = start_watch(promoter.layout.staging, daemon.wake)
    try:
        return daemon.run()
    finally:
        if watcher is not None:
            watcher.close()
        if server is not None:
            server.server_close()  # no shutdown(): serve_forever blocks without polling


def rollback(config: Config, target: str | None) -> int:
    """Switch current back, record it, ask for a reload; 1 when any of it failed."""
    log_start(config)
    promoter = build_promoter(config, CollectorRegistry())
    version = promoter.rollback(target, "manual")
    print(f"current is {version}")
    result = promoter.deliver_reload()
    if result is not None and result.error is not None:
        raise RollbackError(f"switched to {version}, but the reload failed "
                            f"({result.error.reason}); the daemon retries it")
    return 0
