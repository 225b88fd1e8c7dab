"""SIGTERM while the pull job waits on the registry: the daemon exits 0 without waiting
for the network, and the next start resumes the download and promotes the bundle.

The registry is the real docker-registry; between it and the sidecar sits a small
forwarding proxy on 127.0.0.1 that stalls blob bodies after their first bytes while the
test says so (a registry that stops sending cannot be had otherwise)."""

from __future__ import annotations

import http.client
import os
import signal
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from registry import Registry

from tests.support import SidecarProcess, base_env, run_cli, serve_http, sha256, wait_for

pytestmark = pytest.mark.registry
REPO = "models/forecaster"


class StallingProxy:
    """Forwards HEAD and GET to the registry; blob bodies stop after 64 KiB while
    ``stall`` is set."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.stall = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                conn.request(self.command, self.path, headers=headers)
                response = conn.getresponse()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("connection", "transfer-encoding"):
                        self.send_header(key, value)
                self.send_header("Connection", "close")
                self.end_headers()
                if self.command == "HEAD":
                    return
                first = response.read(64 * 1024)
                self.wfile.write(first)
                self.wfile.flush()
                if "/blobs/" in self.path and proxy.stall.is_set():
                    threading.Event().wait(120)  # the body never comes
                    return
                self.wfile.write(response.read())

            def do_GET(self) -> None:
                self._forward()

            def do_HEAD(self) -> None:
                self._forward()

            def log_message(self, *_args: object) -> None:
                pass

        self.httpd = serve_http(Handler)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.httpd.server_port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_sigterm_during_a_stalled_download_exits_and_resumes(
    tmp_path: Path, models: Path, registry: Registry, start_daemon: Callable[..., SidecarProcess]
) -> None:
    """SIGTERM with a blob download hanging: exit 0 (not after the 30 s read timeout),
    the partial file kept; the next start finishes the download and promotes v1."""
    src = tmp_path / "bundle"
    src.mkdir()
    (src / "model.bin").write_bytes(os.urandom(4 * 1024 * 1024))
    env = base_env(
        Path("/nonexistent"),
        SOURCE_INSECURE=registry.host,
        REGISTRY_AUTH_FILE=str(tmp_path / "none.json"),
    )
    pushed = run_cli("push", str(src), f"{registry.host}/{REPO}:stable", env=env)
    assert pushed.returncode == 0, pushed.stderr
    proxy = StallingProxy(registry.host)
    proxy.stall.set()
    try:
        settings = {
            "SOURCE": f"oci://{proxy.host}/{REPO}:stable",
            "SOURCE_INSECURE": proxy.host,
            "SOURCE_POLL_SECONDS": "5",
            "REGISTRY_AUTH_FILE": str(tmp_path / "none.json"),
        }
        daemon = start_daemon(models, "--no-reload", **settings)
        daemon.wait_ready()
        parts = models / ".sidecar" / "pull"
        wait_for(lambda: any(parts.glob("*/blobs/*.part")), 30, "a stalled download")
        assert daemon.stop(signal.SIGTERM, timeout=20) == 0
        assert "stopping with a pull waiting on the registry" in daemon.log()
        assert any(parts.glob("*/blobs/*.part"))
        assert not (models / "current").exists()
        proxy.stall.clear()
        again = start_daemon(models, "--no-reload", **settings)
        wait_for(lambda: (models / "current").is_symlink(), 30, "the resumed bundle promoted")
        served = models / "current" / "model.bin"
        assert sha256(served.read_bytes()) == sha256((src / "model.bin").read_bytes())
        assert again.stop() == 0
    finally:
        proxy.close()
