"""The source check (SPEC 12): one HEAD of the reference per interval, on http.client.

It runs every SOURCE_POLL_SECONDS for the life of the sidecar, so it costs what the
standard library costs: requests and urllib3 (+5.4 MiB) are imported only when a new
digest is downloaded (:mod:`service.oci.client`). The connection is kept alive between
checks (no TLS handshake per check); a kept connection the registry has closed is
replaced once. Each exchange is bounded in time and bytes (:mod:`service.bounded_http`).
The protocol's rules (challenges, token realms, what the answer means) are shared with
the client in :mod:`service.oci.protocol`.
"""

from __future__ import annotations

import functools
import http.client
import ssl
from collections.abc import Mapping
from email.message import Message
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from service.bounded_http import AttemptGuard, CappedHTTPResponse, ReplyTooLarge
from service.oci.auth import credentials_for
from service.oci.protocol import (
    MAX_REDIRECTS,
    MAX_TOKEN_BYTES,
    OCI_MANIFEST,
    REDIRECTS,
    TIMEOUT,
    TLS_FAILED,
    Descriptor,
    RegistryError,
    Stats,
    basic_authorization,
    descriptor_from_head,
    parse_challenge,
    required_credentials,
    same_origin,
    status_reason,
    tls_context,
    token_from_answer,
    token_url,
    unsupported_challenge,
)
from service.oci.reference import base_url

# Headers of a HEAD answer, or a token answer with its headers: nothing legitimate is near.
MAX_ANSWER_BYTES = 2 * MAX_TOKEN_BYTES

Answer = tuple[int, Message, bytes]


class SourceCheck:
    """HEAD requests to one repository of one registry, on one kept-alive connection."""

    def __init__(
        self,
        registry: str,
        repository: str,
        *,
        insecure: frozenset[str] = frozenset(),
        auth_file: Path | None = None,
        ca_file: Path | None = None,
        timeout: tuple[float, float] = TIMEOUT,
    ) -> None:
        self.registry = registry
        self.repository = repository
        self.insecure = insecure
        self.base = base_url(registry, insecure)
        self.auth_file = auth_file
        self.ca_file = ca_file
        self.timeout = timeout
        self.stats = Stats()
        self._conn: http.client.HTTPConnection | None = None
        self._context: ssl.SSLContext | None = None
        self._authorization: str | None = None

    def head_manifest(self, target: str) -> Descriptor:
        """The digest and size the tag (or digest) names now."""
        what = f"{self.registry}/{self.repository}:{target}"
        url = f"{self.base}/v2/{self.repository}/manifests/{target}"
        status, headers, _ = self._request("HEAD", url, {"Accept": OCI_MANIFEST})
        if status != 200:
            raise RegistryError(status_reason(status), f"HEAD {what}: HTTP {status}")
        return descriptor_from_head(
            what,
            target,
            headers.get("Docker-Content-Digest"),
            headers.get("Content-Length"),
            headers.get("Content-Type"),
        )

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- one request, its challenge and its redirects ------------------------------------

    def _request(self, method: str, url: str, headers: Mapping[str, str]) -> Answer:
        challenged = False
        for _ in range(MAX_REDIRECTS + 2):
            if not same_origin(self.base, url):
                where = urlsplit(url).netloc
                raise RegistryError(
                    "connection",
                    f"{method} to {where} refused: only {self.registry} is contacted",
                )
            sent = dict(headers)
            if self._authorization:
                sent["Authorization"] = self._authorization
            status, answer, body = self._on_kept_connection(method, url, sent)
            if status == 401 and not challenged:
                challenged = True
                self._authorization = self._answer(answer.get("WWW-Authenticate", ""))
            elif status in REDIRECTS:
                url = urljoin(url, answer.get("Location", ""))
            else:
                return status, answer, body
        raise RegistryError("connection", f"{method} {self.registry}: too many redirects")

    def _answer(self, header: str) -> str:
        scheme, params = parse_challenge(header)
        if scheme == "basic":
            return basic_authorization(required_credentials(self.auth_file, self.registry))
        if scheme == "bearer" and "realm" in params:
            return "Bearer " + self._fetch_token(params)
        raise unsupported_challenge(self.registry, scheme)

    def _fetch_token(self, params: Mapping[str, str]) -> str:
        url = token_url(self.base, self.registry, self.repository, "pull", params, self.insecure)
        credentials = credentials_for(self.auth_file, self.registry)
        headers = {"Authorization": basic_authorization(credentials)} if credentials else {}
        parts = urlsplit(url)
        conn = self._connect(parts.scheme, parts.netloc)
        try:
            status, _, body = self._exchange(conn, "GET", url, headers)
        except ReplyTooLarge:
            raise RegistryError("auth", f"token {self.registry}: answer too long") from None
        except (OSError, http.client.HTTPException) as exc:
            raise RegistryError("connection", f"token {self.registry}: {_describe(exc)}") from None
        finally:
            conn.close()
        return token_from_answer(self.registry, status, body)

    # -- the connection -------------------------------------------------------------------

    def _on_kept_connection(self, method: str, url: str, headers: Mapping[str, str]) -> Answer:
        """The exchange on the kept connection; a kept one found closed is replaced once
        (HEAD is idempotent, and registries close idle connections)."""
        for fresh in (self._conn is None, True):
            if self._conn is None:
                parts = urlsplit(self.base)
                self._conn = self._connect(parts.scheme, parts.netloc)
            try:
                answer = self._exchange(self._conn, method, url, headers)
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if fresh or isinstance(exc, (TimeoutError, ReplyTooLarge)):
                    raise RegistryError(
                        "connection", f"{method} {self.registry}: {_describe(exc)}"
                    ) from None
                continue
            if answer[1].get("Connection", "").lower() == "close":
                self.close()
            return answer
        raise AssertionError("unreachable")

    def _connect(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        connect_timeout = self.timeout[0]
        if scheme == "https":
            if self._context is None:
                self._context = tls_context(self.ca_file)
            return http.client.HTTPSConnection(
                netloc, timeout=connect_timeout, context=self._context
            )
        return http.client.HTTPConnection(netloc, timeout=connect_timeout)

    def _exchange(
        self, conn: http.client.HTTPConnection, method: str, url: str, headers: Mapping[str, str]
    ) -> Answer:
        """One request and its whole answer, within the read timeout and MAX_ANSWER_BYTES."""
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.stats.requests += 1
        self.stats.paths.append(f"{method} {parts.path}")
        guard = AttemptGuard(self.timeout[1], MAX_ANSWER_BYTES)
        conn.response_class = functools.partial(CappedHTTPResponse, guard=guard)  # type: ignore[assignment]
        try:
            if conn.sock is None:
                conn.connect()
            guard.attach(conn.sock)
            conn.request(method, path, headers=dict(headers))
            response = conn.getresponse()
            body = response.read()
            if guard.expired:
                raise TimeoutError("the answer took longer than the read timeout")
        except (OSError, http.client.HTTPException):
            if guard.expired:
                raise TimeoutError("the answer took longer than the read timeout") from None
            raise
        finally:
            guard.cancel()
        return response.status, response.headers, body


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"{TLS_FAILED}: {exc.verify_message}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
