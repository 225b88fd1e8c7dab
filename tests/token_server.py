"""A Docker token server (the ``auth: token`` realm) for the test registry.

The protocol of auth.docker.io or GitLab's ``/jwt/auth``: ``GET <realm>?service=S&scope=
repository:NAME:ACTIONS`` with Basic credentials answers a JWT that grants the requested
actions; anonymous or wrong credentials get 401 with ``WWW-Authenticate: Basic``.

The JWT is RS256, signed by ``openssl dgst -sha256 -sign`` with an RSA key whose
self-signed certificate (``root_cert``) is the registry's ``rootcertbundle``; the
header's ``x5c`` carries that certificate, which is how distribution 2.8 finds the key.

It serves plain http unless given an ``ssl.SSLContext`` (Registry passes its own when
``tls=True``, so the realm is https under the same private CA).
"""

from __future__ import annotations

import base64
import datetime
import json
import ssl
import subprocess
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

TOKEN_SECONDS = 300


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def grants(scopes: list[str]) -> list[dict[str, Any]]:
    """The ``access`` claim for ``type:name:actions`` scopes: every requested action."""
    access = []
    for scope in scopes:
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        if kind and name:
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
    return access


class _Server(ThreadingHTTPServer):
    """TLS, when wanted, per connection in its own thread: a client that never finishes
    its handshake then holds only that thread, not the accept loop."""

    daemon_threads = True
    context: ssl.SSLContext | None = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.context is None:
            super().finish_request(request, client_address)
            return
        # wrap_socket detaches ``request``: the server's own close would miss the TLS one.
        with self.context.wrap_socket(request, server_side=True) as tls:
            super().finish_request(tls, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up or fails its handshake is the test's business


class TokenServer:
    """``start()`` serves on 127.0.0.1 (port 0 the first time, the same port after);
    ``requests`` holds ``(scope, user)`` for every token it issued since its creation,
    ``refused`` the user (or "" for anonymous) of every request it answered 401."""

    def __init__(
        self,
        workdir: Path,
        users: dict[str, str],
        openssl: str,
        issuer: str = "forecaster-test-issuer",
        service: str = "forecaster-test-registry",
        context: ssl.SSLContext | None = None,
    ) -> None:
        self.workdir = workdir
        self.users = users
        self.openssl = openssl
        self.issuer = issuer
        self.service = service
        self.context = context
        self.key = workdir / "token-signer.key"
        self.root_cert = workdir / "token-signer.pem"
        self._make_signer()
        self.requests: list[tuple[str, str]] = []
        self.refused: list[str] = []
        self._lock = threading.Lock()
        self.port = 0
        self._httpd: _Server | None = None

    def _make_signer(self) -> None:
        subprocess.run(
            [
                self.openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                "-keyout", str(self.key), "-out", str(self.root_cert), "-days", "2",
                "-subj", "/CN=forecaster-test-token-signer",
            ],
            capture_output=True,
            check=True,
        )  # fmt: skip

    @property
    def realm(self) -> str:
        scheme = "https" if self.context else "http"
        return f"{scheme}://127.0.0.1:{self.port}/token"

    def start(self) -> TokenServer:
        httpd = _Server(("127.0.0.1", self.port), self._handler())
        httpd.context = self.context
        self.port = int(httpd.server_port)
        self._httpd = httpd
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    @property
    def running(self) -> bool:
        return self._httpd is not None

    def user_of(self, authorization: str | None) -> str | None:
        """The user whose Basic credentials these are, None when missing or wrong."""
        kind, _, encoded = (authorization or "").partition(" ")
        if kind.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(encoded).decode().partition(":")
        except ValueError:
            return None
        return user if user in self.users and self.users[user] == password else None

    def token(self, user: str, scopes: list[str]) -> str:
        """A JWT that distribution 2.8 accepts (see the module docstring)."""
        now = int(time.time())
        der = ssl.PEM_cert_to_DER_cert(self.root_cert.read_text())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        claims = {
            "iss": self.issuer,
            "aud": self.service,  # a string: distribution 2.8 refuses a list
            "sub": user,
            "iat": now,
            "nbf": now,
            "exp": now + TOKEN_SECONDS,
            "jti": uuid.uuid4().hex,
            "access": grants(scopes),
        }
        signing_input = ".".join(b64url(json.dumps(part).encode()) for part in (header, claims))
        signature = subprocess.run(
            [self.openssl, "dgst", "-sha256", "-sign", str(self.key)],
            input=signing_input.encode(),
            capture_output=True,
            check=True,
        ).stdout
        return f"{signing_input}.{b64url(signature)}"

    def answer(self, path: str, authorization: str | None) -> tuple[int, dict[str, Any] | None]:
        """(status, JSON body) for a GET of ``path``."""
        url = urllib.parse.urlsplit(path)
        if url.path != "/token":
            return 404, None
        user = self.user_of(authorization)
        if user is None:
            with self._lock:
                self.refused.append(self._claimed_user(authorization))
            return 401, None
        scopes = [
            s for v in urllib.parse.parse_qs(url.query).get("scope", []) for s in v.split(" ")
        ]
        token = self.token(user, scopes)
        with self._lock:
            self.requests.append((" ".join(scopes), user))
        issued = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
        body = {"token": token, "access_token": token, "expires_in": TOKEN_SECONDS}
        return 200, {**body, "issued_at": issued}

    @staticmethod
    def _claimed_user(authorization: str | None) -> str:
        try:
            decoded = base64.b64decode((authorization or "").partition(" ")[2]).decode()
        except ValueError:
            return ""
        return decoded.partition(":")[0]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = server.answer(self.path, self.headers.get("Authorization"))
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                if status == 401:
                    self.send_header("WWW-Authenticate", 'Basic realm="forecaster-test-token"')
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler
