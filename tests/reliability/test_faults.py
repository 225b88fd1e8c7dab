"""Faults injected for real: a full filesystem, permissions, staging deleted, the models
root missing, and reload servers that reset or hang. Each gives a clear log line, a
counted failure, no loss, and recovery once the fault is gone."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from verify import check_current, check_no_leftovers

from tests.support import (
    ReloadServer,
    base_env,
    mounted_tmpfs,
    run_cli,
    tree_digest,
    wait_for,
    write_bundle,
)
from tests.support import SidecarProcess as _Daemon

Start = Callable[..., _Daemon]


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted by the test (root only; skipped where mount is refused)."""
    with mounted_tmpfs(tmp_path / "small", "4m") as mnt:
        yield mnt


def test_enospc_keeps_the_bundle_staged_until_space_returns(
    small_fs: Path, tmp_path: Path, start_daemon: Start
) -> None:
    """Copying into a full volume fails (io_error); the bundle stays; more space -> promoted."""
    models = small_fs / "models"
    staging = tmp_path / "staging"  # another filesystem: the bundle is copied
    daemon = start_daemon(models, "--poll-interval", "1", STAGING_DIR=str(staging))
    daemon.wait_ready()
    write_bundle(staging, {"big.bin": os.urandom(6 * 1024 * 1024)}, version="v1")
    staged = tree_digest(staging)
    daemon.wait_metric(
        "model_sidecar_promotion_failures_total", lambda v: (v or 0) >= 1, reason="io_error"
    )
    line = next(ln for ln in daemon.log().splitlines() if "No space left on device" in ln)
    assert "copy of" in line and str(models) in line  # the operation and the path
    assert tree_digest(staging) == staged
    assert not (models / ".sidecar" / "work" / "incoming").exists()
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_fs)], check=True)
    daemon.wait_metric("model_sidecar_promotions_total", lambda v: v == 1, outcome="success")
    assert check_current(models) == "v1"
    assert os.listdir(staging) == []


def test_permission_fault_is_counted_and_recovers_when_fixed(
    models: Path, start_daemon: Start
) -> None:
    """An immutable staging dir (chattr +i; root ignores modes, so EACCES cannot be made
    here and EPERM takes its place) counts io_error and keeps the bundle; promoted after."""
    write_bundle(models / "staging", {"m.bin": b"data"}, version="v1")
    staged = tree_digest(models / "staging")
    locked = subprocess.run(
        ["chattr", "+i", str(models / "staging")], capture_output=True, text=True, check=False
    )
    if locked.returncode != 0:
        pytest.skip(f"chattr +i is not supported here: {locked.stderr.strip()}")
    try:
        daemon = start_daemon(models, "--poll-interval", "1")
        daemon.wait_metric(
            "model_sidecar_promotion_failures_total", lambda v: (v or 0) >= 1, reason="io_error"
        )
        line = next(ln for ln in daemon.log().splitlines() if "Operation not permitted" in ln)
        assert "claiming the staged bundle" in line and str(models / "staging") in line
        assert tree_digest(models / "staging") == staged
        assert not (models / ".sidecar" / "work" / "incoming").exists()
    finally:
        subprocess.run(["chattr", "-i", str(models / "staging")], check=True)
    daemon.wait_metric("model_sidecar_promotions_total", lambda v: v == 1, outcome="success")
    assert check_current(models) == "v1"


def test_staging_deleted_while_running_is_recreated(models: Path, start_daemon: Start) -> None:
    """rm -rf staging under a running daemon: it is re-created, the watch re-armed."""
    daemon = start_daemon(models, "--poll-interval", "1")
    daemon.wait_ready()
    shutil.rmtree(models / "staging")
    wait_for(lambda: (models / "staging").is_dir(), what="staging re-created")
    write_bundle(models / "staging", {"m.bin": b"1"}, version="v1")
    daemon.wait_metric("model_sidecar_promotions_total", lambda v: v == 1, outcome="success")
    assert daemon.stop() == 0


def test_missing_models_root_is_created(tmp_path: Path, start_daemon: Start) -> None:
    """A MODELS_ROOT that does not exist yet is created with the whole layout."""
    models = tmp_path / "not" / "yet"
    daemon = start_daemon(models, "--poll-interval", "1")
    daemon.wait_ready()
    assert (models / "staging").is_dir() and (models / ".sidecar" / "lock").exists()
    check_no_leftovers(models)


class ResettingServer:
    """Accepts a connection and resets it (RST) without answering."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            linger = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # on, 0 s: close sends RST
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            conn.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/reload"


def test_connection_reset_is_a_connection_failure(models: Path, start_daemon: Start) -> None:
    """A server that resets connections: counted as connection, the promotion stands."""
    server = ResettingServer()
    daemon = start_daemon(models, "--poll-interval", "1", RELOAD_URL=server.url, RELOAD_RETRIES="1")
    daemon.wait_ready()
    write_bundle(models / "staging", {"m.bin": b"1"}, version="v1")
    daemon.wait_metric(
        "model_sidecar_reload_failures_total", lambda v: (v or 0) >= 1, reason="connection"
    )
    assert check_current(models) == "v1"
    assert server.accepted >= 2
    server.sock.close()


def test_a_hung_reload_server_does_not_stop_promotions(
    models: Path, start_daemon: Start, reload_server: ReloadServer
) -> None:
    """Reloads that time out are counted; later bundles are still promoted."""
    reload_server.default = "hang"
    daemon = start_daemon(
        models,
        "--poll-interval",
        "1",
        RELOAD_URL=reload_server.url,
        RELOAD_TIMEOUT="0.5",
        RELOAD_RETRIES="0",
    )
    daemon.wait_ready()
    for n in range(3):
        write_bundle(models / "staging", {"m.bin": bytes([n])}, version=f"v{n}")
        daemon.wait_metric("model_sidecar_current_version_info", lambda v: v == 1, version=f"v{n}")
    assert (daemon.metric("model_sidecar_reload_failures_total", reason="timeout") or 0) >= 3
    assert daemon.stop() == 0


def test_cli_once_on_a_volume_held_by_a_daemon_waits_for_the_lock(
    models: Path, start_daemon: Start
) -> None:
    """run --once next to a running daemon waits for the lock and exits 0."""
    daemon = start_daemon(models, "--poll-interval", "1")
    daemon.wait_ready()
    assert run_cli("--once", env=base_env(models)).returncode == 0
    assert daemon.stop() == 0
