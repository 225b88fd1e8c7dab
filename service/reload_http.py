"""The HTTP side of the reload (SPEC section 6), imported on the first reload only.

Retries are urllib3's ``Retry`` mounted through a requests ``HTTPAdapter``; this module
only builds the request, classifies the outcome and runs the optional verification.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError, NewConnectionError
from urllib3.exceptions import TimeoutError as Urllib3Timeout
from urllib3.util.retry import Retry

from service.config import Config
from service.errors import ReloadFailed
from service.reload import ReloadRequest, ReloadResult

RETRY_STATUSES = frozenset({429, *range(500, 600)})
BACKOFF_FACTOR = 0.5
BACKOFF_MAX = 5.0
BACKOFF_JITTER = 0.5
VERIFY_PAUSE = 0.1


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


def make_session(retries: int) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # a proxy from the environment must not see the token
    adapter = HTTPAdapter(max_retries=make_retry(retries), pool_connections=1, pool_maxsize=1)
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


def read_token(config: Config) -> str | None:
    """The bearer token; the file is re-read on every request so rotation takes effect."""
    if config.reload_token_file is not None:
        return Path(config.reload_token_file).read_text().strip()
    return config.reload_token


def attempts_of(response: requests.Response) -> int:
    retries = getattr(response.raw, "retries", None)
    return 1 + (len(retries.history) if retries is not None else 0)


class HttpReloader:
    """Built by :class:`service.reload.Reloader` on its first reload, with its arguments."""

    def __init__(self, config: Config, session: requests.Session | None,
                 clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
        self.config = config
        self.session = session or make_session(config.reload_retries)
        self.verify_session = requests.Session()
        self.verify_session.trust_env = False
        self.clock = clock
        self.sleep = sleep

    def _headers(self, request: ReloadRequest) -> dict[str, str]:
        headers = {"X-Model-Version": request.version}
        try:
            token = read_token(self.config)
        except OSError as exc:
            detail = f"cannot read RELOAD_TOKEN_FILE: {exc.strerror}"
            raise ReloadFailed("connection", detail) from None
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _send(self, request: ReloadRequest) -> int:
        """Send the reload request with retries; the number of HTTP requests it took."""
        assert self.config.reload_url is not None
        body = {"version": request.version, "path": request.path, "previous": request.previous}
        timeout = self.config.reload_timeout
        try:
            response = self.session.request(
                self.config.reload_method, self.config.reload_url, json=body,
                headers=self._headers(request), timeout=(timeout, timeout), allow_redirects=False,
            )
        except requests.RequestException as exc:
            reason = "timeout" if is_timeout(exc) else "connection"
            raise _Failed(self.config.reload_retries + 1, reason, _describe(exc)) from None
        attempts = attempts_of(response)
        if not 200 <= response.status_code < 300:
            raise _Failed(attempts, "http_status", f"reload answered HTTP {response.status_code}")
        return attempts

    def _verify(self, version: str) -> None:
        url = (self.config.reload_verify_url or "").replace("{version}", version)
        deadline = self.clock() + self.config.reload_timeout
        last = "no answer"
        while (remaining := deadline - self.clock()) > 0:
            try:
                status = self.verify_session.get(url, timeout=remaining).status_code
                if 200 <= status < 300:
                    return
                last = f"HTTP {status}"
            except requests.RequestException as exc:
                last = _describe(exc)
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


def _describe(exc: requests.RequestException) -> str:
    """A one-line description of a request error (requests' own can be very long)."""
    cause: BaseException = exc
    while cause.args and isinstance(cause.args[0], BaseException):
        cause = cause.args[0]
    if isinstance(cause, MaxRetryError) and cause.reason is not None:
        cause = cause.reason
    return f"{type(cause).__name__}: {cause}"[:300]
