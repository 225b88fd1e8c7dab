"""A small OCI distribution client on http.client and ssl: only what pulling and pushing need.

Every manifest and blob is checked against its digest and size as it streams; nothing
unverified is ever given a final name. Requests go only to the registry named in the
reference (a redirect elsewhere is refused), each with a bounded timeout. Credentials
come from the auth file and go only into the ``Authorization`` header. requests and
urllib3 (+5.4 MiB that would stay for the life of the sidecar) are never imported: the
connection, challenge and redirects are :mod:`service.oci.transport`'s, shared with the
source check.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from service.bounded_http import ReplyTooLarge
from service.oci.protocol import (
    OCI_MANIFEST,
    TIMEOUT,
    Descriptor,
    RegistryError,
    Stats,
    next_url,
    sha256_digest,
    status_reason,
)
from service.oci.transport import MAX_ANSWER_BYTES, Body, Errors, Reply, Transport, describe

log = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # the limit registries commonly enforce
CHUNK = 1024 * 1024
UPLOAD_CHUNK = 64 * 1024 * 1024
# A body that trickles (a byte every 29 s never trips the read timeout) must not hold the
# job forever: a blob gets BLOB_FLOOR_SECONDS plus its size at MIN_BYTES_PER_SECOND.
BLOB_FLOOR_SECONDS = 60.0
MIN_BYTES_PER_SECOND = 256 * 1024


def body_seconds(size: int) -> float:
    return BLOB_FLOOR_SECONDS + size / MIN_BYTES_PER_SECOND


class FileSlice(io.RawIOBase):
    """``length`` bytes of ``source`` from ``start``, streamed; ``seek(0)`` rewinds to
    ``start`` (the transport rewinds a body it sends again after a challenge)."""

    def __init__(self, source: IO[bytes], start: int, length: int) -> None:
        super().__init__()
        self._source, self._start, self._length, self._done = source, start, length, 0
        source.seek(start)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")[: self._length - self._done]
        count = self._source.readinto(view) if view.nbytes else 0  # type: ignore[attr-defined]
        self._done += count or 0
        return count or 0

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if (offset, whence) != (0, io.SEEK_SET):
            raise io.UnsupportedOperation("a FileSlice only rewinds")
        self._source.seek(self._start)
        self._done = 0
        return 0


class RegistryClient:
    """One registry, one repository; ``actions`` is the token scope (``pull`` or
    ``pull,push``)."""

    # A blob larger than this is sent in PATCHes of this size: under the 100 MB a request
    # that many proxies in front of registries accept.
    upload_chunk = UPLOAD_CHUNK

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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.repository = repository
        self.clock = clock
        self.stats = Stats()
        self.transport = Transport(
            registry,
            repository,
            insecure=insecure,
            auth_file=auth_file,
            ca_file=ca_file,
            timeout=timeout,
            actions=actions,
            stats=self.stats,
        )
        self.base = self.transport.base

    # -- requests --------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return f"{self.base}/v2/{self.repository}/{path}"

    def request(
        self,
        method: str,
        url: str,
        headers: dict[str, str] | None = None,
        body: Body = None,
    ) -> Reply:
        """Send, answering one auth challenge and following same-registry redirects."""
        return self.transport.request(method, url, headers, body)

    def _exchange(self, method: str, url: str, headers: dict[str, str], body: Body = None) -> Reply:
        """A request whose (small) answer is read; its headers and status are returned."""
        with self.request(method, url, headers, body) as reply:
            try:
                reply.read(MAX_ANSWER_BYTES)
                reply.expired_check()
            except Errors as exc:
                raise RegistryError(
                    "connection", f"{method} {self.registry}: {describe(exc)}"
                ) from None
        return reply

    def close(self) -> None:
        self.transport.close()

    @staticmethod
    def _fail(reply: Reply, what: str) -> RegistryError:
        reply.close()
        code = reply.status
        return RegistryError(status_reason(code), f"{what}: HTTP {code}")

    # -- manifests -------------------------------------------------------------------------

    def head_manifest(self, target: str) -> Descriptor:
        """The digest and size the tag (or digest) names now: one HEAD request."""
        return self.transport.head_manifest(target)

    def get_manifest(self, digest: str) -> bytes:
        """The manifest bytes, checked against digest (a registry may serve tampered bytes
        under the original digest header)."""
        reply = self.request("GET", self._url(f"manifests/{digest}"), {"Accept": OCI_MANIFEST})
        with reply:
            if reply.status != 200:
                raise self._fail(reply, f"GET manifest {digest}")
            reply.extend(body_seconds(MAX_MANIFEST_BYTES), MAX_MANIFEST_BYTES)
            data = _read_capped(reply, MAX_MANIFEST_BYTES, f"manifest {digest}")
        self.stats.bytes_received += len(data)
        if sha256_digest(data) != digest:
            raise RegistryError("digest_mismatch", f"manifest {digest}: bytes do not match")
        return data

    def put_manifest(self, tag: str, data: bytes, media_type: str = OCI_MANIFEST) -> str:
        reply = self._exchange(
            "PUT", self._url(f"manifests/{tag}"), {"Content-Type": media_type}, data
        )
        if reply.status not in (200, 201):
            raise self._fail(reply, f"PUT manifest {self.repository}:{tag}")
        self.stats.bytes_sent += len(data)
        digest = sha256_digest(data)
        answered = reply.headers.get("Docker-Content-Digest", digest)
        if answered != digest:
            raise RegistryError("digest_mismatch", f"PUT manifest: registry stored {answered}")
        return digest

    # -- blobs -----------------------------------------------------------------------------

    def blob_exists(self, digest: str) -> bool:
        reply = self._exchange("HEAD", self._url(f"blobs/{digest}"), {})
        if reply.status == 200:
            return True
        if reply.status == 404:
            return False
        raise self._fail(reply, f"HEAD blob {digest}")

    def upload_blob(self, digest: str, size: int, source: IO[bytes] | bytes) -> None:
        """POST opens a session; a blob up to ``upload_chunk`` bytes goes in one streamed
        PUT with its digest, a larger one in PATCHes of ``upload_chunk`` bytes (each
        following the Location the previous answer named) and an empty PUT with it."""
        reply = self._exchange("POST", self._url("blobs/uploads/"), {"Content-Length": "0"})
        location = self._next_location(reply, 202, f"POST upload of {digest}")
        body, length = source, size
        if size > self.upload_chunk:
            stream = io.BytesIO(source) if isinstance(source, bytes) else source
            location = self._patch_chunks(location, digest, size, stream)
            body, length = b"", 0
        separator = "&" if "?" in location else "?"
        # Content-Type: distribution misreads a blob PUT without it.
        reply = self._exchange(
            "PUT",
            f"{location}{separator}digest={digest}",
            {"Content-Type": "application/octet-stream", "Content-Length": str(length)},
            body,
        )
        if reply.status != 201:
            raise self._fail(reply, f"PUT blob {digest}")
        self.stats.bytes_sent += size

    def _patch_chunks(self, location: str, digest: str, size: int, source: IO[bytes]) -> str:
        """Send the blob in chunks; the Location to finish the upload at."""
        for start in range(0, size, self.upload_chunk):
            length = min(self.upload_chunk, size - start)
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Length": str(length),
                "Content-Range": f"{start}-{start + length - 1}",
            }
            chunk = FileSlice(source, start, length)
            reply = self._exchange("PATCH", location, headers, chunk)
            location = self._next_location(reply, 202, f"PATCH blob {digest} at {start}")
        return location

    def _next_location(self, reply: Reply, status: int, what: str) -> str:
        if reply.status != status or "Location" not in reply.headers:
            raise self._fail(reply, what)
        return next_url(self._url("blobs/uploads/"), reply.headers["Location"], "connection")

    def _counter(
        self, descriptor: Descriptor, remaining: int, progress: Callable[[int], None] | None
    ) -> Callable[[int], None]:
        deadline = self.clock() + body_seconds(remaining)

        def count(length: int) -> None:
            self.stats.bytes_received += length
            if progress is not None:
                progress(length)
            if self.clock() > deadline:
                raise RegistryError("connection", _too_slow(descriptor))

        return count

    def download_blob(
        self, descriptor: Descriptor, part: Path, progress: Callable[[int], None] | None = None
    ) -> int:
        """Stream the blob into ``part``, resuming what is there with a Range request.

        On return ``part`` holds exactly the blob, fsynced and verified; the bytes
        received by this call are returned. A dropped connection keeps what was written
        (reason ``connection``); wrong bytes delete it (``digest_mismatch``). ``progress``
        is called with the length of every chunk written.
        """
        hasher, offset = _hash_existing(part, descriptor.size)
        if offset < descriptor.size:
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            self.stats.range_requests += bool(offset)
            reply = self.request("GET", self._url(f"blobs/{descriptor.digest}"), headers)
            with reply:
                if reply.status == 200 and offset:
                    hasher, offset = hashlib.sha256(), 0  # the registry ignored Range
                elif reply.status not in (200, 206) or (
                    reply.status == 206 and not _range_starts(reply, offset)
                ):
                    raise self._fail(reply, f"GET blob {descriptor.digest}")
                remaining = descriptor.size - offset
                reply.extend(body_seconds(remaining), remaining)
                count = self._counter(descriptor, remaining, progress)
                received = _stream_to(reply, part, offset, descriptor, hasher, count)
        else:
            received = 0
        _check_complete(part, descriptor, hasher)
        return received


def _too_slow(descriptor: Descriptor) -> str:
    return (
        f"blob {descriptor.digest}: slower than {MIN_BYTES_PER_SECOND} B/s, stopped (resumed later)"
    )


def _read_capped(reply: Reply, cap: int, what: str) -> bytes:
    try:
        data = reply.read(cap)
    except ReplyTooLarge:
        data = b"x" * (cap + 1)  # the budget is the cap and the headers: past the cap
    except Errors as exc:
        raise RegistryError("connection", f"{what}: {describe(exc)}") from None
    if len(data) > cap:
        raise RegistryError("digest_mismatch", f"{what} is larger than {cap} B")
    return data


def _range_starts(reply: Reply, offset: int) -> bool:
    match = re.match(r"bytes ([0-9]{1,18})-", reply.headers.get("Content-Range", ""))
    return match is not None and int(match.group(1)) == offset


def _hash_existing(part: Path, size: int) -> tuple[Any, int]:
    """The sha256 state over the partial file, and its length (a too-long one is reset)."""
    hasher = hashlib.sha256()
    try:
        with part.open("rb") as fh:
            length = 0
            while chunk := fh.read(CHUNK):
                hasher.update(chunk)
                length += len(chunk)
    except FileNotFoundError:
        return hasher, 0
    if length > size:
        part.unlink()
        return hashlib.sha256(), 0
    return hasher, length


def _stream_to(
    reply: Reply,
    part: Path,
    offset: int,
    descriptor: Descriptor,
    hasher: Any,
    count: Callable[[int], None],
) -> int:
    received = 0
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "wb") as out:
        out.truncate(offset)
        out.seek(offset)
        try:
            received = _write_chunks(
                reply.chunks(CHUNK), out, part, offset, descriptor, hasher, count
            )
        except Errors as exc:
            detail = _too_slow(descriptor) if reply.guard.expired else describe(exc)
            raise RegistryError(
                "connection", f"blob {descriptor.digest} after {out.tell()} B: {detail}"
            ) from None
        finally:
            out.flush()
            os.fsync(out.fileno())  # keep what arrived: the next attempt resumes from it
    return received


def _write_chunks(
    chunks: Iterable[bytes],
    out: IO[bytes],
    part: Path,
    offset: int,
    descriptor: Descriptor,
    hasher: Any,
    count: Callable[[int], None],
) -> int:
    received = 0
    for chunk in chunks:
        if offset + received + len(chunk) > descriptor.size:
            part.unlink()
            raise RegistryError(
                "digest_mismatch", f"blob {descriptor.digest} is longer than {descriptor.size} B"
            )
        out.write(chunk)
        hasher.update(chunk)
        received += len(chunk)
        count(len(chunk))
    return received


def _check_complete(part: Path, descriptor: Descriptor, hasher: Any) -> None:
    length = part.stat().st_size
    if length != descriptor.size:
        raise RegistryError(
            "connection", f"blob {descriptor.digest}: {length} of {descriptor.size} B arrived"
        )
    if hasher.hexdigest() != descriptor.hex:
        part.unlink()
        raise RegistryError("digest_mismatch", f"blob {descriptor.digest}: bytes do not match")
