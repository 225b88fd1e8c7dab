"""The HTTP side of the reload (SPEC section 6), imported on the first reload only.

Retries are urllib3's ``Retry`` mounted through a requests ``HTTPAdapter``; this module
builds the request, bounds every attempt, classifies the outcome and runs the optional
verification.

urllib3's timeouts apply to each socket operation, so a server that dribbles its reply
one byte at a time would hold an attempt for ever, and one that streams an endless body
would fill memory. So every attempt runs on a :class:`GuardedConnection`: a watchdog
(:class:`AttemptGuard`) shuts the socket down when the attempt's time is up, at most
``MAX_REPLY_BYTES`` of the reply (status line, headers and body) are read, and the whole
reply is read inside urllib3's ``getresponse``. An attempt that runs out of time is then
a read timeout, which ``Retry`` retries like any other, and the connection is closed
after every attempt. A reply longer than that is not read further: its status decides.
Limits: name resolution and a TLS handshake are bounded by the per-operation timeout
only (the reload URL is normally an address on the pod's loopback).

The token never appears in a message: it is checked (:mod:`service.tokens`) before it
goes into a header, so the HTTP stack has no reason to quote it, and every description
of an HTTP error is scrubbed of it all the same.
"""

from __future__ import annotations

import errno
import functools
import http.client
import io
import os
import re
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3 import HTTPConnectionPool, HTTPResponse, HTTPSConnectionPool
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import HTTPError, MaxRetryError, NewConnectionError
from urllib3.exceptions import TimeoutError as Urllib3Timeout
from urllib3.util.retry import Retry

from service import tokens
from service.bounded_http import AttemptGuard, CappedHTTPResponse
from service.config import Config
from service.errors import ReloadFailed
from service.reload import ReloadRequest, ReloadResult

RETRY_STATUSES = frozenset({429, *range(500, 600)})
BACKOFF_FACTOR = 0.5
BACKOFF_MAX = 5.0
BACKOFF_JITTER = 0.5
VERIFY_PAUSE = 0.1
MAX_REPLY_BYTES = 64 * 1024
READ_CHUNK = 8192
EXPIRED = "the attempt ran past its time limit (RELOAD_TIMEOUT)"
_BEARER = re.compile(r"(?i)(bearer)[^'\"]*")  # to the end of the quoted header value
_DROPPED_HEADERS = ("content-encoding", "content-length", "transfer-encoding")


# -- one bounded attempt -------------------------------------------------------------------


class GuardedConnection(HTTPConnection):
    """A connection on which each request and its whole reply is one bounded attempt.

    The attempt's time limit is the timeout urllib3 gives the connection when the
    attempt starts (the connect timeout of the request). The attempt ends, and the
    connection is closed, when the reply has been read or anything fails.
    """

    _guard: AttemptGuard | None = None

    def _arm(self) -> AttemptGuard:
        if self._guard is None:
            self._guard = AttemptGuard(self.timeout, MAX_REPLY_BYTES)
            self.response_class = functools.partial(  # type: ignore[assignment]
                CappedHTTPResponse, guard=self._guard
            )
            if self.sock is not None:
                self._guard.attach(self.sock)
        return self._guard

    def _end_attempt(self) -> None:
        if self._guard is not None:
            self._guard.cancel()
            self._guard = None

    def connect(self) -> None:
        guard = self._arm()
        try:
            super().connect()
        except BaseException:
            self._end_attempt()
            raise
        assert self.sock is not None
        guard.attach(self.sock)

    def request(self, *args: Any, **kwargs: Any) -> None:
        guard = self._arm()
        try:
            super().request(*args, **kwargs)
        except OSError:
            if not guard.expired:  # when it has, getresponse reports the timeout
                self._end_attempt()
                raise
        except BaseException:
            self._end_attempt()
            raise

    def getresponse(self) -> HTTPResponse:  # type: ignore[override]  # as urllib3 does
        guard = self._arm()
        try:
            if guard.expired:
                raise TimeoutError(EXPIRED)
            response = super().getresponse()
            body = _read_body(response, guard)
            if guard.expired:  # the socket was shut down: the body may look complete
                raise TimeoutError(EXPIRED)
        except (OSError, http.client.HTTPException, HTTPError):
            if guard.expired:  # urllib3 turns this into a ReadTimeoutError, retried
                raise TimeoutError(EXPIRED) from None
            raise
        finally:
            self._end_attempt()
            self.close()
        return _buffered(response, body)


class GuardedHTTPSConnection(GuardedConnection, HTTPSConnection):
    pass


def _read_body(response: HTTPResponse, guard: AttemptGuard) -> bytes:
    """The reply's body as sent (not decoded), cut where the byte budget runs out."""
    chunks = []
    try:
        while chunk := response.read(READ_CHUNK, decode_content=False):
            chunks.append(chunk)
    except (OSError, http.client.HTTPException, HTTPError):
        if not guard.over:
            raise
    finally:
        response.close()
    return b"".join(chunks)


def _buffered(response: HTTPResponse, body: bytes) -> HTTPResponse:
    """A response holding what was read of ``response``, for urllib3 and requests."""
    headers = response.headers.copy()
    for name in _DROPPED_HEADERS:  # they describe the reply as sent, not what is kept of it
        headers.discard(name)
    return HTTPResponse(
        body=io.BytesIO(body),
        headers=headers,
        status=response.status,
        version=response.version,
        version_string=response.version_string,
        reason=response.reason,
        preload_content=False,
        decode_content=False,
        enforce_content_length=False,
        request_url=response.url,
    )


class _GuardedPool(HTTPConnectionPool):
    ConnectionCls = GuardedConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = GuardedHTTPSConnection


class GuardedAdapter(HTTPAdapter):
    """requests' adapter whose pools open :class:`GuardedConnection` connections."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _GuardedPool, "https": _GuardedHTTPSPool}


# -- the session and the retry policy ------------------------------------------------------


class CappedRetry(Retry):
    """``Retry`` whose wait on a ``Retry-After`` header is capped like its backoff."""

    def get_retry_after(self, response: Any) -> float | None:
        value = super().get_retry_after(response)
        return None if value is None else min(value, self.backoff_max)


def make_retry(retries: int) -> Retry:
    return CappedRetry(
        total=retries,
        allowed_methods=None,
        status_forcelist=RETRY_STATUSES,
        backoff_factor=BACKOFF_FACTOR,
        backoff_max=BACKOFF_MAX,
        backoff_jitter=BACKOFF_JITTER,
        raise_on_status=False,
        redirect=0,
    )


def make_session(retries: Retry | int) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # a proxy or .netrc from the environment must not see a thing
    session.headers["Accept-Encoding"] = "identity"  # the reply is not decoded anyway
    adapter = GuardedAdapter(max_retries=retries, pool_connections=1, pool_maxsize=1)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def is_timeout(exc: BaseException) -> bool:
    if isinstance(exc, requests.Timeout):
        return True
    cause = exc.args[0] if exc.args else None
    reason = cause.reason if isinstance(cause, MaxRetryError) else None
    # NewConnectionError subclasses ConnectTimeoutError for history's sake: it is a refusal.
    return isinstance(reason, Urllib3Timeout) and not isinstance(reason, NewConnectionError)


def attempts_of(response: requests.Response) -> int:
    retries = getattr(response.raw, "retries", None)
    return 1 + (len(retries.history) if retries is not None else 0)


# -- the token -----------------------------------------------------------------------------


def read_token(config: Config) -> str | None:
    """The bearer token, checked; the file is re-read for every request (rotation).

    A token that is missing, unreadable or invalid is ReloadFailed("token"): nothing is
    sent, and the message never contains the token or any part of it.
    """
    if config.reload_token_file is not None:
        return read_token_file(config.reload_token_file)
    if config.reload_token is None:
        return None
    try:
        return tokens.check_token(config.reload_token)
    except tokens.TokenError as exc:
        raise ReloadFailed("token", f"RELOAD_TOKEN: {exc}") from None


def read_token_file(path: Path) -> str:
    where = f"RELOAD_TOKEN_FILE {path}"
    try:
        data = _read_head(path, tokens.MAX_TOKEN_BYTES + 3)
    except OSError as exc:
        raise ReloadFailed("token", f"{where}: cannot read it: {exc.strerror}") from None
    try:
        return tokens.token_from_bytes(data)
    except tokens.TokenError as exc:
        raise ReloadFailed("token", f"{where}: {exc}") from None


def _read_head(path: Path, limit: int) -> bytes:
    """At most ``limit`` bytes of a regular file (a fifo there must not block the pass)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        data = b""
        while len(data) < limit and (chunk := os.read(fd, limit - len(data))):
            data += chunk
        return data
    finally:
        os.close(fd)


# -- the reload ----------------------------------------------------------------------------


class HttpReloader:
    """Built by :class:`service.reload.Reloader` on its first reload, with its arguments."""

    def __init__(
        self,
        config: Config,
        session: requests.Session | None,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
    ) -> None:
        self.config = config
        self.session = session or make_session(make_retry(config.reload_retries))
        self.verify_session = make_session(0)
        self.clock = clock
        self.sleep = sleep

    def _headers(self, request: ReloadRequest, token: str | None) -> dict[str, str]:
        headers = {"X-Model-Version": request.version}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _send(self, request: ReloadRequest) -> int:
        """Send the reload request with retries; the number of HTTP requests it took."""
        assert self.config.reload_url is not None
        token = read_token(self.config)
        body = {"version": request.version, "path": request.path, "previous": request.previous}
        timeout = self.config.reload_timeout
        try:
            with self.session.request(
                self.config.reload_method,
                self.config.reload_url,
                json=body,
                headers=self._headers(request, token),
                timeout=(timeout, timeout),
                allow_redirects=False,
                stream=True,
            ) as response:
                status, attempts = response.status_code, attempts_of(response)
        except requests.RequestException as exc:
            reason = "timeout" if is_timeout(exc) else "connection"
            detail = describe(exc, [token] if token else [])
            raise _Failed(self.config.reload_retries + 1, reason, detail) from None
        if not 200 <= status < 300:
            raise _Failed(attempts, "http_status", f"reload answered HTTP {status}")
        return attempts

    def _verify_once(self, url: str, seconds: float) -> str | None:
        """None when ``url`` answers 2xx within ``seconds``, else what it did instead."""
        try:
            with self.verify_session.get(
                url, timeout=(seconds, seconds), stream=True, allow_redirects=False
            ) as response:
                status = response.status_code
        except requests.RequestException as exc:
            return describe(exc, [])
        return None if 200 <= status < 300 else f"HTTP {status}"

    def _verify(self, version: str) -> None:
        url = (self.config.reload_verify_url or "").replace("{version}", version)
        deadline = self.clock() + self.config.reload_timeout
        last = "no answer"
        while (remaining := deadline - self.clock()) > 0:
            outcome = self._verify_once(url, remaining)
            if outcome is None:
                return
            last = outcome
            self.sleep(min(VERIFY_PAUSE, max(deadline - self.clock(), 0)))
        raise ReloadFailed("verify", f"server did not confirm version {version}: {last}")

    def reload(self, request: ReloadRequest) -> ReloadResult:
        """Request a reload (and verify it); report a failure instead of raising it."""
        start = self.clock()
        try:
            attempts = self._send(request)
        except _Failed as exc:
            return ReloadResult(exc.attempts, exc.attempts, self.clock() - start, exc.error)
        except ReloadFailed as exc:
            return ReloadResult(0, 0, self.clock() - start, exc)
        error = None
        if self.config.reload_verify_url:
            try:
                self._verify(request.version)
            except ReloadFailed as exc:
                error = exc
        return ReloadResult(attempts, attempts - 1, self.clock() - start, error)


class _Failed(Exception):
    def __init__(self, attempts: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.attempts = attempts
        self.error = ReloadFailed(reason, detail)


def describe(exc: BaseException, secrets: Iterable[str]) -> str:
    """A one-line description of a request error, without any header value in it.

    requests' own text can be long, and some of its errors quote a header's value: the
    token is checked before it is sent so that they have no reason to, and any secret
    or ``Bearer`` value that shows up all the same is replaced here.
    """
    cause: BaseException = exc
    while cause.args and isinstance(cause.args[0], BaseException):
        cause = cause.args[0]
    if isinstance(cause, MaxRetryError) and cause.reason is not None:
        cause = cause.reason
    text = f"{type(cause).__name__}: {cause}"
    for secret in secrets:
        text = text.replace(secret, "<redacted>")
    text = _BEARER.sub(r"\1 <redacted>", text)
    return " ".join(text.split())[:300]
