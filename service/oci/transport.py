"""One registry's kept connection and its bounded exchanges, on http.client and ssl.

Shared by the source check (:mod:`service.oci.check`) and the client that pulls and
pushes (:mod:`service.oci.client`), so that neither imports requests or urllib3. Each
request goes only to the registry (a redirect elsewhere is refused, 303 becomes a GET
without body), answers one 401 challenge (Basic, or Bearer with a token asked of its
realm, see :func:`service.oci.protocol.token_url`), and reads its answer's headers within
an :class:`~service.bounded_http.AttemptGuard` (read timeout and byte budget). No proxy
or .netrc from the environment is used: http.client reads neither.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import io
import select
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from email.message import Message
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

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
    next_url,
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

# Headers of an answer, or a token answer with its headers: nothing legitimate is near.
MAX_ANSWER_BYTES = 2 * MAX_TOKEN_BYTES
UPLOAD_BLOCK = 1024 * 1024
# As urllib3's Retry(connect=2, backoff_factor=0.5) did: a refused or timed-out connect
# is tried again at once, then after 1 s; a request that reached the server never is.
CONNECT_RETRIES = 2
BACKOFF_FACTOR = 0.5

BODY_HEADERS = frozenset({"content-length", "content-type"})

Answer = tuple[int, Message, bytes]
Body = IO[bytes] | io.RawIOBase | bytes | None
Errors = (OSError, http.client.HTTPException)


def describe(exc: BaseException) -> str:
    """An exception for a message: never a header we sent (no credential is in these)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"{TLS_FAILED}: {exc.verify_message}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def backoff(retry: int) -> float:
    return 0.0 if retry <= 1 else BACKOFF_FACTOR * 2 ** (retry - 1)


class Reply:
    """An answer whose headers have arrived; its body is read within the guard."""

    def __init__(
        self,
        response: http.client.HTTPResponse,
        guard: AttemptGuard,
        on_done: Callable[[bool], None],
    ) -> None:
        self.response = response
        self.status = response.status
        self.headers: Message = response.headers
        self.guard = guard
        self._on_done = on_done

    def extend(self, seconds: float, max_bytes: int) -> None:
        """The body's own deadline, and ``max_bytes`` more to read for it."""
        self.guard.renew(seconds, max_bytes)

    def read(self, cap: int) -> bytes:
        """At most ``cap + 1`` bytes of the body (one more tells the caller it is over)."""
        data = bytearray()
        for chunk in self.chunks(64 * 1024):
            data += chunk
            if len(data) > cap:
                break
        return bytes(data)

    def chunks(self, size: int) -> Iterator[bytes]:
        """The body as it arrives; OSError or HTTPException when it stops early."""
        try:
            while chunk := self.response.read1(size):
                yield chunk
        except Errors:
            self.expired_check()
            raise
        self.expired_check()
        if self.response.length:  # the registry closed before Content-Length was sent
            raise http.client.IncompleteRead(b"", self.response.length)

    def expired_check(self) -> None:
        if self.guard.expired:
            raise TimeoutError("the answer took longer than its deadline")

    def close(self) -> None:
        """Done with this answer; the connection is kept only if it was read to its end."""
        self.guard.cancel()
        ended = self.response.isclosed() or self.response.length == 0  # 0: a HEAD's
        reusable = ended and not self.response.will_close
        self.response.close()
        self._on_done(reusable and not self.guard.expired)

    def discard(self) -> None:
        """Read what is left of a small body (a 401's, a redirect's), then close."""
        with contextlib.suppress(*Errors):
            self.read(MAX_ANSWER_BYTES)
        self.close()

    def __enter__(self) -> Reply:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Transport:
    """Requests to one repository of one registry, on one kept-alive connection."""

    def __init__(
        self,
        registry: str,
        repository: str,
        *,
        insecure: frozenset[str] = frozenset(),
        auth_file: Path | None = None,
        ca_file: Path | None = None,
        timeout: tuple[float, float] = TIMEOUT,
        actions: str = "pull",
        stats: Stats | None = None,
        connect_retries: int = CONNECT_RETRIES,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.registry = registry
        self.repository = repository
        self.insecure = insecure
        self.base = base_url(registry, insecure)
        self.auth_file = auth_file
        self.ca_file = ca_file
        self.timeout = timeout
        self.actions = actions
        self.stats = stats or Stats()
        self.connect_retries = connect_retries
        self.sleep = sleep
        self._conn: http.client.HTTPConnection | None = None
        self._context: ssl.SSLContext | None = None
        self._authorization: str | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- one request, its challenge and its redirects ------------------------------------

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        body: Body = None,
        *,
        replay: bool = False,
    ) -> Reply:
        """Send, answering one challenge and following same-registry redirects; the
        answer's headers have arrived. ``replay``: an idempotent request is sent again
        once when a kept connection fails under it (a registry's idle timeout)."""
        challenged = False
        for _ in range(MAX_REDIRECTS + 2):
            self._refuse_elsewhere(method, url)
            sent = dict(headers or {})
            if self._authorization:
                sent["Authorization"] = self._authorization
            if body is not None and not isinstance(body, bytes):
                body.seek(0)
            reply = self._on_kept_connection(method, url, sent, body, replay)
            if reply.status == 401 and not challenged:
                reply.discard()
                challenged = True
                self._authorization = self._answer(reply.headers.get("WWW-Authenticate", ""))
            elif reply.status in REDIRECTS:
                reply.discard()
                url = next_url(url, reply.headers.get("Location", ""), "connection")
                if reply.status == 303:
                    method, body, headers = "GET", None, _without_body(headers or {})
            else:
                return reply
        raise RegistryError("connection", f"{method} {self.registry}: too many redirects")

    def exchange(
        self, method: str, url: str, headers: Mapping[str, str] | None = None, body: Body = None
    ) -> Answer:
        """A request and its whole (small) answer."""
        with self.request(method, url, headers, body, replay=method == "HEAD") as reply:
            try:
                data = reply.read(MAX_ANSWER_BYTES)
                reply.expired_check()
            except Errors as exc:
                raise self._failed(method, exc) from None
        return reply.status, reply.headers, data

    def head_manifest(self, target: str) -> Descriptor:
        """The digest and size the tag (or digest) names now: one HEAD request."""
        what = f"{self.registry}/{self.repository}:{target}"
        url = f"{self.base}/v2/{self.repository}/manifests/{target}"
        status, headers, _ = self.exchange("HEAD", url, {"Accept": OCI_MANIFEST})
        if status != 200:
            raise RegistryError(status_reason(status), f"HEAD {what}: HTTP {status}")
        return descriptor_from_head(
            what,
            target,
            headers.get("Docker-Content-Digest"),
            headers.get("Content-Length"),
            headers.get("Content-Type"),
        )

    def _refuse_elsewhere(self, method: str, url: str) -> None:
        if not same_origin(self.base, url):
            where = urlsplit(url).netloc
            raise RegistryError(
                "connection", f"{method} to {where} refused: only {self.registry} is contacted"
            )

    def _answer(self, header: str) -> str:
        scheme, params = parse_challenge(header)
        if scheme == "basic":
            return basic_authorization(required_credentials(self.auth_file, self.registry))
        if scheme == "bearer" and "realm" in params:
            return "Bearer " + self._fetch_token(params)
        raise unsupported_challenge(self.registry, scheme)

    def _fetch_token(self, params: Mapping[str, str]) -> str:
        url = token_url(
            self.base, self.registry, self.repository, self.actions, params, self.insecure
        )
        credentials = credentials_for(self.auth_file, self.registry)
        headers = {"Authorization": basic_authorization(credentials)} if credentials else {}
        parts = urlsplit(url)
        conn: http.client.HTTPConnection | None = None
        try:
            conn = self._connect(parts.scheme, parts.netloc)
            reply = self._send(conn, "GET", url, headers, None)
            with reply:
                body = reply.read(MAX_TOKEN_BYTES)
                reply.expired_check()
        except ReplyTooLarge:
            raise RegistryError("auth", f"token {self.registry}: answer too long") from None
        except Errors as exc:
            raise RegistryError("connection", f"token {self.registry}: {describe(exc)}") from None
        finally:
            if conn is not None:
                conn.close()
        return token_from_answer(self.registry, reply.status, body)

    # -- the connection -------------------------------------------------------------------

    def _failed(self, method: str, exc: BaseException) -> RegistryError:
        return RegistryError("connection", f"{method} {self.registry}: {describe(exc)}")

    def _on_kept_connection(
        self, method: str, url: str, headers: Mapping[str, str], body: Body, replay: bool
    ) -> Reply:
        """The request on the kept connection (replaced when the registry closed it)."""
        for fresh in (self._conn is None or not replay, True):
            conn = self._kept(method)
            try:
                return self._send(conn, method, url, headers, body, self._release)
            except Errors as exc:
                self.close()
                if fresh or isinstance(exc, (TimeoutError, ReplyTooLarge)):
                    raise self._failed(method, exc) from None
        raise AssertionError("unreachable")

    def _kept(self, method: str) -> http.client.HTTPConnection:
        if self._conn is not None and _dropped(self._conn):
            self.close()  # closed by the registry while idle: as urllib3, open another
        if self._conn is None:
            parts = urlsplit(self.base)
            try:
                self._conn = self._connect(parts.scheme, parts.netloc)
            except Errors as exc:
                raise self._failed(method, exc) from None
        return self._conn

    def _release(self, reusable: bool) -> None:
        if not reusable:
            self.close()

    def _connect(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        """A connected connection: the TCP connect retried, never the TLS handshake."""
        conn: http.client.HTTPConnection
        if scheme == "https":
            if self._context is None:
                self._context = tls_context(self.ca_file)
            conn = http.client.HTTPSConnection(
                netloc, timeout=self.timeout[0], context=self._context, blocksize=UPLOAD_BLOCK
            )
        else:
            conn = http.client.HTTPConnection(
                netloc, timeout=self.timeout[0], blocksize=UPLOAD_BLOCK
            )
        for retry in range(1, self.connect_retries + 2):
            try:
                http.client.HTTPConnection.connect(conn)
                break
            except OSError:
                if retry > self.connect_retries:
                    raise
                self.sleep(backoff(retry))
        if self._context is not None and scheme == "https":
            conn.sock = self._context.wrap_socket(conn.sock, server_hostname=conn.host)
        conn.sock.settimeout(self.timeout[1])
        return conn

    def _send(
        self,
        conn: http.client.HTTPConnection,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: Body,
        on_done: Callable[[bool], None] = lambda reusable: None,
    ) -> Reply:
        """Send; the answer's headers within the read timeout and MAX_ANSWER_BYTES."""
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.stats.requests += 1
        self.stats.paths.append(f"{method} {parts.path}")
        conn.request(method, path, body=body, headers=dict(headers))
        guard = AttemptGuard(self.timeout[1], MAX_ANSWER_BYTES)
        conn.response_class = functools.partial(CappedHTTPResponse, guard=guard)  # type: ignore[assignment]
        try:
            guard.attach(conn.sock)
            response = conn.getresponse()
            if guard.expired:
                raise TimeoutError("the answer took longer than the read timeout")
        except Errors:
            guard.cancel()
            if guard.expired:
                raise TimeoutError("the answer took longer than the read timeout") from None
            raise
        return Reply(response, guard, on_done)


def _without_body(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in BODY_HEADERS}


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """Whether an idle connection was closed (readable when nothing is asked: EOF)."""
    sock = conn.sock
    if not isinstance(sock, socket.socket):
        return True
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True
