"""A real OCI registry for tests: Debian's docker-registry on 127.0.0.1, throwaway storage.

Never the Debian config (it listens on all interfaces): each instance gets its own
config with ``127.0.0.1:0`` (or a fixed port, to restart on the same address), its own
storage root, and optionally htpasswd Basic auth, or ``proxy_of`` another instance to run
as distribution's pull-through cache of it (a site mirror).

``tls=True`` serves https with a server certificate for 127.0.0.1 signed by a throwaway CA
(``ca_file``) that no trust store knows. ``token_auth=True`` (with ``users``) replaces
Basic auth by distribution's token auth: a TokenServer (tests/token_server.py) on another
127.0.0.1 port is the realm, and its ``requests`` are the tokens it issued.
"""

from __future__ import annotations

import base64
import json
import os
import re
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.token_server import TokenServer

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


def make_ca(directory: Path, openssl: str) -> tuple[Path, Path]:
    """A throwaway CA, (certificate, key), made by the openssl CLI."""
    cert, key = directory / "ca.pem", directory / "ca.key"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
            "-subj", "/CN=forecaster-sidecar test CA",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        ],
        capture_output=True,
        check=True,
    )  # fmt: skip
    return cert, key


# Python 3.13's default context checks X.509 strictly: the leaf needs its AKID.
SERVER_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


def make_server_cert(directory: Path, ca: tuple[Path, Path], openssl: str) -> tuple[Path, Path]:
    """A server certificate for 127.0.0.1 and localhost signed by ``ca``: (cert, key)."""
    cert, key, csr = directory / "server.pem", directory / "server.key", directory / "server.csr"
    extensions = directory / "server.ext"
    extensions.write_text(SERVER_EXTENSIONS)
    run = [openssl, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    subprocess.run(
        [*run, "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1"],
        capture_output=True,
        check=True,
    )
    subprocess.run(
        [
            openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
            "-set_serial", f"0x{os.urandom(8).hex()}", "-days", "2",
            "-extfile", str(extensions), "-out", str(cert),
        ],
        capture_output=True,
        check=True,
    )  # fmt: skip
    return cert, key


class Registry:
    """``start()`` runs it, ``kill()`` stops it hard, ``start()`` again reuses the port."""

    def __init__(
        self,
        workdir: Path,
        users: dict[str, str] | None = None,
        binary: str | None = None,
        htpasswd: str | None = None,
        proxy_of: Registry | None = None,
        tls: bool = False,
        token_auth: bool = False,
        openssl: str | None = None,
    ) -> None:
        assert users or not token_auth, "token_auth needs users"
        self.binary = binary or _tool("docker-registry")
        self._htpasswd_tool = htpasswd
        self.workdir = workdir
        self.storage = workdir / "storage"
        self.storage.mkdir(parents=True, exist_ok=True)
        self.users = users or {}
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.proxy_of = proxy_of
        self._openssl = openssl
        self.ca_file: Path | None = None
        self._tls: tuple[Path, Path] | None = self._make_tls() if tls else None
        self.token_server: TokenServer | None = self._make_token_server() if token_auth else None
        self._htpasswd = self._write_htpasswd() if self.users and not token_auth else None

    def _openssl_tool(self) -> str:
        return self._openssl or _tool("openssl")

    def _make_tls(self) -> tuple[Path, Path]:
        tls = self.workdir / "tls"
        tls.mkdir(exist_ok=True)
        ca = make_ca(tls, self._openssl_tool())
        self.ca_file = ca[0]
        return make_server_cert(tls, ca, self._openssl_tool())

    def _make_token_server(self) -> TokenServer:
        from tests.token_server import TokenServer  # benchmarks import this module alone

        return TokenServer(
            self.workdir, self.users, self._openssl_tool(), context=self._server_context()
        )

    def _server_context(self) -> ssl.SSLContext | None:
        if self._tls is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*self._tls)
        return context

    def client_context(self) -> ssl.SSLContext:
        """An ssl context that trusts this registry's CA (and only it)."""
        assert self.ca_file is not None, "tls=False: nothing to trust"
        return ssl.create_default_context(cafile=str(self.ca_file))

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

    def _auth_config(self) -> str:
        if self.token_server is not None:
            token = self.token_server
            return (
                f'auth: {{token: {{realm: "{token.realm}", service: "{token.service}", '
                f'issuer: "{token.issuer}", rootcertbundle: "{token.root_cert}"}}}}\n'
            )
        if self._htpasswd:
            return f"auth: {{htpasswd: {{realm: test-realm, path: {self._htpasswd}}}}}\n"
        return ""

    def _config(self) -> Path:
        auth = self._auth_config()
        if self.proxy_of is not None:
            auth += f'proxy: {{remoteurl: "{self.proxy_of.url}"}}\n'
        tls = (
            f', tls: {{certificate: "{self._tls[0]}", key: "{self._tls[1]}"}}' if self._tls else ""
        )
        path = self.workdir / "config.yml"
        path.write_text(
            "version: 0.1\n"
            "log: {level: info, accesslog: {disabled: true}}\n"
            f"storage: {{filesystem: {{rootdirectory: {self.storage}}}, "
            "delete: {enabled: true}}\n"
            f'http: {{addr: "127.0.0.1:{self.port}", secret: test-only{tls}}}\n' + auth
        )
        return path

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def scheme(self) -> str:
        return "https" if self._tls else "http"

    @property
    def url(self) -> str:
        """``scheme://host``, the registry's base URL."""
        return f"{self.scheme}://{self.host}"

    def _env(self) -> dict[str, str]:
        env = {"GOMEMLIMIT": "64MiB"}
        if self.proxy_of is not None and self.proxy_of.ca_file is not None:
            env["SSL_CERT_FILE"] = str(self.proxy_of.ca_file)  # a mirror trusts its origin
        return env

    def start(self) -> Registry:
        """Start it and wait for ``/v2/``. Its log goes to a file, never a pipe: a Go
        program dies of SIGPIPE when its stderr pipe is closed."""
        if self.token_server is not None and not self.token_server.running:
            self.token_server.start()  # first: the config names its port
        log = self.workdir / "registry.log"
        with log.open("w") as out:
            self.proc = proc = subprocess.Popen(
                [self.binary, "serve", str(self._config())],
                stdout=subprocess.DEVNULL,
                stderr=out,
                env=self._env(),
            )
        end = time.monotonic() + START_DEADLINE
        while not (match := LISTENING.search(log.read_text(errors="replace"))):
            assert proc.poll() is None, f"docker-registry exited: {log.read_text()}"
            assert time.monotonic() < end, "docker-registry did not start"
            time.sleep(0.01)
        self.port = int(match.group(1))
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        end = time.monotonic() + START_DEADLINE
        while time.monotonic() < end:
            try:
                context = self.client_context() if self._tls else None
                urllib.request.urlopen(f"{self.url}/v2/", timeout=1, context=context).close()
                return
            except urllib.error.HTTPError:
                return  # 401 with auth: it answers
            except OSError:
                time.sleep(0.02)
        raise AssertionError("docker-registry does not answer /v2/")

    def kill(self) -> None:
        """The registry process only: its token server, like a real one, lives on."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        """The registry and its token server."""
        if self.token_server is not None:
            self.token_server.stop()
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
