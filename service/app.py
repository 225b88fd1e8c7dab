"""Wiring: builds the objects of a run from the configuration and starts them."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry

from service import __version__, history, lockfile, volume
from service.config import Config
from service.errors import RollbackError
from service.health import Health
from service.http_server import make_app, start_server
from service.jobs.promote import PassResult, Promoter
from service.layout import Layout
from service.metrics import Metrics
from service.placement import check_volume
from service.progress import Progress
from service.reload import Reloader
from service.startline import start_message

if TYPE_CHECKING:
    from service.jobs.pull import PullJob
    from service.oci.client import RegistryClient
    from service.scheduler import Daemon
    from service.signals import EarlyStop

log = logging.getLogger(__name__)


def build_promoter(
    config: Config,
    registry: CollectorRegistry,
    progress: Progress | None = None,
    retried_later: bool = True,
    record_pending: bool | None = None,
) -> Promoter:
    return Promoter(
        config,
        Metrics(registry),
        Reloader(config),
        progress=progress,
        retried_later=retried_later,
        record_pending=record_pending,
    )


def log_start(config: Config, promoter: Promoter) -> None:
    """One human line, and the effective configuration as fields (secrets redacted)."""
    try:
        current = promoter.current()
    except OSError:
        current = None
    line, fields = start_message(config, current, promoter.interval())
    log.info("%s", line, extra={"fields": {"sidecar_version": __version__, **fields}})
    if config.reload_token_file is not None and not config.reload_token_file.exists():
        log.warning(
            "RELOAD_TOKEN_FILE %s does not exist yet: reloads fail (reason token) until it does",
            config.reload_token_file,
        )


def check_trusted_keys(config: Config) -> None:
    """TRUSTED_KEYS_FILE is read at start: an invalid one is a ConfigError (exit 2)."""
    if config.trusted_keys_file is not None:
        from service import signing  # PyNaCl stays out of a sidecar without signatures

        keys = signing.load_trusted_keys(config.trusted_keys_file)
        log.info("signatures required: %d trusted key(s) in %s", len(keys.keys), keys.path)


def build_pull_job(config: Config, registry: CollectorRegistry) -> PullJob | None:
    """The pull job of SOURCE (SPEC 12), None when SOURCE is not set.

    Both the check and the client that downloads are on the standard library; the
    client is made the first time a digest changes.
    """
    if config.source is None:
        return None
    from service.jobs.pull import PullJob
    from service.oci.check import SourceCheck
    from service.oci.protocol import load_ca_file
    from service.oci.reference import source_reference
    from service.pull_metrics import PullMetrics

    ref = source_reference(config.source)
    if config.registry_ca_file is not None:
        load_ca_file(config.registry_ca_file)  # exit 2 at start, not a failing check later
    insecure = frozenset(config.source_insecure)
    auth_file = config.registry_auth_file or default_auth_file()
    ca_file = config.registry_ca_file
    check = SourceCheck(
        ref.registry, ref.repository, insecure=insecure, auth_file=auth_file, ca_file=ca_file
    )

    def open_client() -> RegistryClient:
        from service.oci.client import RegistryClient

        return RegistryClient(
            ref.registry, ref.repository, insecure=insecure, auth_file=auth_file, ca_file=ca_file
        )

    return PullJob(Layout.from_config(config), ref, check, open_client, PullMetrics(registry))


def default_auth_file() -> Path:
    return Path.home() / ".docker" / "config.json"


def run_once(config: Config, registry: CollectorRegistry | None = None) -> PassResult:
    """One pass (recovery, promotion, pending reload); what it did."""
    check_trusted_keys(config)
    check_volume(config, create=True)
    promoter = build_promoter(config, registry or CollectorRegistry(), retried_later=False)
    log_start(config, promoter)
    result = promoter.run_pass(wait=True)
    log.info(
        "single pass done: %s%s",
        result.outcome,
        " (the reload failed)" if result.reload_failed else "",
    )
    return result


def _claim_volume(config: Config, layout: Layout) -> lockfile.DaemonLock:
    reload = config.redacted().get("reload_url") if config.reload_url else None
    me = lockfile.this_process(
        None if reload is None else str(reload), config.reload_method, history.rfc3339(time.time())
    )
    lock = lockfile.DaemonLock(layout.daemon_lock, me)
    other = lock.acquire(me)
    if other is not None:
        log.warning(
            "another sidecar daemon runs on %s (%s); passes take turns on the volume lock",
            config.models_root,
            other.describe(),
        )
    return lock


def run_daemon(
    config: Config, registry: CollectorRegistry = REGISTRY, early: EarlyStop | None = None
) -> None:
    """The daemon until a stop signal (``early``: the handler installed at start)."""
    from service.scheduler import Daemon
    from service.signals import EarlyStop

    early = early or EarlyStop()
    try:
        _run_daemon(config, registry, Daemon, early)
    finally:
        early.restore()


def _run_daemon(
    config: Config, registry: CollectorRegistry, daemon_class: type[Daemon], early: EarlyStop
) -> None:
    check_trusted_keys(config)
    check_volume(config, create=True)
    layout = Layout.from_config(config)
    volume.ensure_dirs(layout)
    pull = build_pull_job(config, registry)
    health = Health(clock=time.time)
    progress = Progress(on_progress=health.progress)  # a long hash is progress
    promoter = build_promoter(config, registry, progress)
    log_start(config, promoter)
    server = None
    if config.metrics_port:  # first: a port in use exits 2 before the volume is claimed
        server = start_server(config.metrics_addr, config.metrics_port, make_app(registry, health))
        log.info(
            "serving /metrics, /healthz, /readyz on %s:%d", config.metrics_addr, server.server_port
        )
    lock = _claim_volume(config, layout)
    daemon = daemon_class(promoter, promoter.metrics, health, time.time, progress, lock)
    daemon.pull, daemon.pull_seconds = pull, config.source_poll_seconds
    watcher = None
    if config.watch:
        from service.watch import start_watch

        watcher = daemon.watch = start_watch(
            layout.staging, layout.state, daemon.wake, daemon.wake_for_command
        )
    try:
        daemon.run(early)
    finally:
        lock.release()
        if watcher is not None:
            watcher.close()
        if server is not None:
            server.close()


def rollback(config: Config, target: str | None) -> None:
    """Switch current back and record it; the reload goes to the daemon on the volume
    when one runs (with its own reload settings), else it is sent from here."""
    check_volume(config, create=False)
    layout = Layout.from_config(config)
    daemon = lockfile.read_daemon(layout)
    # A running daemon delivers the reload with its own settings (none when it has
    # reloading disabled); this command's settings apply only when no daemon runs.
    record = None if daemon is None else daemon.reload is not None
    promoter = build_promoter(
        config, CollectorRegistry(), retried_later=False, record_pending=record
    )
    version = promoter.rollback(target, "manual")
    print(f"current is {version} (in {config.models_root})")
    if daemon is not None:
        print(
            f"the daemon ({daemon.describe()}) delivers the reload"
            if daemon.reload
            else f"the daemon ({daemon.describe()}) has reloading disabled"
        )
        return
    result = promoter.delivery.send_pending()
    if result is not None and result.error is not None:
        raise RollbackError(
            f"switched to {version}, but the reload failed "
            f"({result.error.reason}); a daemon on this volume retries it "
            f"when it starts"
        )
