"""One HTTP exchange within a deadline and a byte budget, on the standard library only.

urllib3's and http.client's timeouts apply to each socket operation, so a server that
dribbles its reply one byte at a time would hold an exchange for ever, and one that
streams endless headers or body would fill memory. An :class:`AttemptGuard` shuts the
socket down when the exchange's time is up, and :class:`CappedHTTPResponse` reads the
socket only within the guard's budget. The reload (:mod:`service.reload_http`, through
urllib3) and the source check (:mod:`service.oci.check`, on http.client) both use them.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import socket
import threading
from typing import Any


class ReplyTooLarge(OSError):
    """The reply goes on past the guard's byte budget; nothing more of it is read."""


class AttemptGuard:
    """One attempt's limits: a deadline, and a budget of bytes read from the socket.

    When the deadline passes, the attempt's socket is shut down so that any read or
    write in progress ends at once; ``expired`` tells the attempt why it ended.
    """

    def __init__(self, seconds: float | None, max_bytes: int) -> None:
        self.expired = False
        self.over = False
        self.max_bytes = max_bytes
        self.remaining = max_bytes
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._done = False
        self._timer = None if seconds is None else threading.Timer(seconds, self._expire)
        if self._timer is not None:
            self._timer.daemon = True
            self._timer.start()

    def attach(self, sock: socket.socket) -> None:
        """Watch ``sock`` (the connection's own, which http.client may drop early)."""
        with self._lock:
            self._sock = sock
            if self.expired:
                self._shutdown()

    def _expire(self) -> None:
        with self._lock:
            if not self._done:
                self.expired = True
                self._shutdown()

    def _shutdown(self) -> None:
        # The plain socket's shutdown: SSLSocket's own would drop its TLS state under
        # the reading thread. OSError: already closed, nothing left to stop.
        if self._sock is not None:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(self._sock, socket.SHUT_RDWR)

    def cancel(self) -> None:
        with self._lock:
            self._done = True
        if self._timer is not None:
            self._timer.cancel()

    def renew(self, seconds: float, more_bytes: int) -> None:
        """A new deadline from now and ``more_bytes`` more to read: a body, after its
        headers were read within the first ones."""
        with self._lock:
            if self.expired or self._done:
                return
            if self._timer is not None:
                self._timer.cancel()
            self.max_bytes += more_bytes
            self.remaining += more_bytes
            self._timer = threading.Timer(seconds, self._expire)
            self._timer.daemon = True
            self._timer.start()

    def charge(self, wanted: int) -> int:
        """How many of ``wanted`` bytes may be read; ReplyTooLarge when none may."""
        if self.remaining <= 0:
            self.over = True
            raise ReplyTooLarge(f"the reply is longer than {self.max_bytes} bytes")
        return min(wanted, self.remaining)


class CappedReader(io.RawIOBase):
    """The socket's reader, within the guard's byte budget."""

    def __init__(self, raw: io.RawIOBase, guard: AttemptGuard) -> None:
        super().__init__()
        self._raw = raw
        self._guard = guard

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        view = memoryview(buffer).cast("B")
        count = self._raw.readinto(view[: self._guard.charge(len(view))])
        if count:
            self._guard.remaining -= count
        return count

    def fileno(self) -> int:
        return self._raw.fileno()

    def close(self) -> None:
        self._raw.close()
        super().close()


class CappedHTTPResponse(http.client.HTTPResponse):
    """http.client's response, reading its socket through a :class:`CappedReader`.

    Interim answers (1xx but 101, such as 103 Early Hints) are skipped as http.client
    skips 100: otherwise a 103 would be taken for the answer, and the real one for the
    answer to the next request on the connection. The byte budget bounds their number.
    """

    def __init__(self, sock: socket.socket, *args: Any, guard: AttemptGuard, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        raw = self.fp.detach()
        self.fp = io.BufferedReader(CappedReader(raw, guard))

    def _read_status(self) -> tuple[str, int, str]:
        version, status, reason = super()._read_status()  # type: ignore[misc]
        if 100 < status < 200 and status != 101:
            status = http.client.CONTINUE  # begin() then skips its headers and reads on
        return version, status, reason
