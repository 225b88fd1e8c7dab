"""Asking the model server to reload (SPEC section 6): what a reload is and what it did.

The HTTP machinery (requests, urllib3's ``Retry``) lives in :mod:`service.reload_http`
and is imported on the first reload: a sidecar that has not promoted anything since it
started does not carry requests, urllib3 and their TLS stack (about 7 MB resident).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.config import Config
from service.errors import ReloadFailed

if TYPE_CHECKING:
    import requests

    from service.reload_http import HttpReloader


@dataclass(frozen=True)
class ReloadRequest:
    version: str
    path: str
    previous: str | None


@dataclass(frozen=True)
class ReloadResult:
    """What one reload did: HTTP requests sent, how many failed, and the final error.

    A reload refused before anything is sent (reason ``token``) has no attempts.
    """

    attempts: int
    failed_attempts: int
    duration: float
    error: ReloadFailed | None = None


class Reloader:
    def __init__(
        self,
        config: Config,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self._session = session
        self._clock = clock
        self._sleep = sleep
        self._client: HttpReloader | None = None

    @property
    def enabled(self) -> bool:
        return self.config.reload_url is not None

    def reload(self, request: ReloadRequest) -> ReloadResult:
        """Request a reload (and verify it); report a failure instead of raising it."""
        if self._client is None:
            from service.reload_http import HttpReloader

            self._client = HttpReloader(self.config, self._session, self._clock, self._sleep)
        return self._client.reload(request)
