"""A real OCI registry for tests: Debian's docker-registry on 127.0.0.1, throwaway storage.

Never the Debian config (it listens on all interfaces): each instance gets its own
config with ``127.0.0.1:0`` (or a fixed port, to restart on the same address), its own
storage root, and optionally htpasswd Basic auth, or ``proxy_of`` another instance to run
as distribution's pull-through cache of it (a site mirror).
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path

LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")
# distribution logs every request it answered on stderr, access log or not.
COMPLETED = re.compile(
    r'msg="response completed".*?http\.request\.method=(\w+).*?http\.request\.uri="?([^" ]+)'
)
START_DEADLINE = 20.0


def _tool(name: str) -> str:
    """The tool's path (a failure in CI when it is missing, a skip elsewhere)."""
    from tests.support import require_tool  # only under pytest: benchmarks pass the paths

    return require_tool(name)


class Registry:
    """``start()`` runs it, ``kill()`` stops it hard, ``start()`` again reuses the port."""

    def __init__(
        self,
        workdir: Path,
        users: dict[str, str] | None = None,
        binary: str | None = None,
        htpasswd: str | None = None,
        proxy_of: Registry | None = None,
    ) -> None:
        self.binary = binary or _tool("docker-registry")
        self._htpasswd_tool = htpasswd
        self.workdir = workdir
        self.storage = workdir / "storage"
        self.storage.mkdir(parents=True, exist_ok=True)
        self.users = users or {}
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self.proxy_of = proxy_of
        self._htpasswd = self._write_htpasswd() if self.users else None

    def _write_htpasswd(self) -> Path:
        htpasswd = self._htpasswd_tool or _tool("htpasswd")
        path = self.workdir / "htpasswd"
        lines = [
            subprocess.run(
                [htpasswd, "-Bbn", user, password], capture_output=True, text=True, check=True
            ).stdout.strip()
            for user, password in self.users.items()
        ]
        path.write_text("\n".join(lines) + "\n")
        return path

    def _config(self) -> Path:
        auth = (
            f"auth: {{htpasswd: {{realm: test-realm, path: {self._htpasswd}}}}}\n"
            if self._htpasswd
            else ""
        )
        if self.proxy_of is not None:
            auth += f'proxy: {{remoteurl: "http://{self.proxy_of.host}"}}\n'
        path = self.workdir / "config.yml"
        path.write_text(
            "version: 0.1\n"
            "log: {level: info, accesslog: {disabled: true}}\n"
            f"storage: {{filesystem: {{rootdirectory: {self.storage}}}, "
            "delete: {enabled: true}}\n"
            f'http: {{addr: "127.0.0.1:{self.port}", secret: test-only}}\n' + auth
        )
        return path

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Registry:
        """Start it and wait for ``/v2/``. Its log goes to a file, never a pipe: a Go
        program dies of SIGPIPE when its stderr pipe is closed."""
        log = self.workdir / "registry.log"
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                [self.binary, "serve", str(self._config())],
                stdout=subprocess.DEVNULL,
                stderr=out,
                env={"GOMEMLIMIT": "64MiB"},
            )
        end = time.monotonic() + START_DEADLINE
        while not (match := LISTENING.search(log.read_text(errors="replace"))):
            assert self.proc.poll() is None, f"docker-registry exited: {log.read_text()}"
            assert time.monotonic() < end, "docker-registry did not start"
            time.sleep(0.01)
        self.port = int(match.group(1))
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        end = time.monotonic() + START_DEADLINE
        while time.monotonic() < end:
            try:
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1).close()
                return
            except urllib.error.HTTPError:
                return  # 401 with auth: it answers
            except OSError:
                time.sleep(0.02)
        raise AssertionError("docker-registry does not answer /v2/")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def requests(self, method: str, path_part: str) -> int:
        """How many ``method`` requests whose path holds ``path_part`` it has answered
        since its last start (from its log)."""
        log = (self.workdir / "registry.log").read_text(errors="replace")
        return sum(
            1 for m in COMPLETED.finditer(log) if m.group(1) == method and path_part in m.group(2)
        )

    def blob_path(self, digest: str) -> Path:
        """Where the filesystem driver keeps a blob's bytes (to corrupt it in a test)."""
        hexdigest = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"

    def auth_file(self, path: Path, user: str, password: str) -> Path:
        """A Docker config.json with credentials for this registry."""
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        path.write_text(json.dumps({"auths": {self.host: {"auth": token}}}))
        return path
