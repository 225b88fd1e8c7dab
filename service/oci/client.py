"""A small OCI distribution client on ``requests``: only what pulling and pushing need.

Every manifest and blob is checked against its digest and size as it streams; nothing
unverified is ever given a final name. Requests go only to the registry named in the
reference (a redirect elsewhere is refused), each with a bounded timeout. Credentials
come from the auth file and go only into the ``Authorization`` header.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

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
    sha256_digest,
    status_reason,
    token_from_answer,
    token_url,
    unsupported_challenge,
)
from service.oci.reference import base_url

log = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # the limit registries commonly enforce
CHUNK = 1024 * 1024
# A body that trickles (a byte every 29 s never trips the read timeout) must not hold the
# job forever: a blob gets BLOB_FLOOR_SECONDS plus its size at MIN_BYTES_PER_SECOND.
BLOB_FLOOR_SECONDS = 60.0
MIN_BYTES_PER_SECOND = 256 * 1024


def make_session(pool: int = 4, ca_file: Path | None = None) -> requests.Session:
    """A session that retries connecting (never a request that reached the server).

    TLS is verified with ca_file when given (REGISTRY_CA_FILE, a private registry's CA),
    else with the CA bundle requests ships (certifi).
    """
    session = requests.Session()
    if ca_file is not None:
        session.verify = str(ca_file)
    retry = Retry(
        total=2,
        connect=2,
        read=0,
        status=0,
        other=0,
        backoff_factor=0.5,
        allowed_methods=None,
        raise_on_status=False,
    )
    adapter = HTTPAdapter(max_retries=retry, pool_connections=pool, pool_maxsize=pool)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.trust_env = False  # no proxy or .netrc from the environment: only the registry
    return session


class RegistryClient:
    """One registry, one repository; ``actions`` is the token scope (``pull`` or
    ``pull,push``)."""

    def __init__(
        self,
        registry: str,
        repository: str,
        *,
        insecure: frozenset[str] = frozenset(),
        auth_file: Path | None = None,
        ca_file: Path | None = None,
        session: requests.Session | None = None,
        timeout: tuple[float, float] = TIMEOUT,
        actions: str = "pull",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.repository = repository
        self.insecure = insecure
        self.base = base_url(registry, insecure)
        self.auth_file = auth_file
        self.session = session or make_session(ca_file=ca_file)
        self.timeout = timeout
        self.clock = clock
        self.actions = actions
        self.stats = Stats()
        self._authorization: str | None = None

    # -- requests --------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return f"{self.base}/v2/{self.repository}/{path}"

    def _send(
        self, method: str, url: str, headers: Mapping[str, str], **kwargs: Any
    ) -> requests.Response:
        if not same_origin(self.base, url):
            raise RegistryError(
                "connection",
                f"{method} to {urlsplit(url).netloc} refused: only {self.registry} is contacted",
            )
        sent = dict(headers)
        if self._authorization:
            sent["Authorization"] = self._authorization
        self.stats.requests += 1
        self.stats.paths.append(f"{method} {urlsplit(url).path}")
        try:
            return self.session.request(
                method, url, headers=sent, timeout=self.timeout, allow_redirects=False, **kwargs
            )
        except requests.exceptions.SSLError:
            raise RegistryError("connection", f"{method} {self.registry}: {TLS_FAILED}") from None
        except requests.RequestException as exc:
            raise RegistryError(
                "connection", f"{method} {self.registry}: {type(exc).__name__}"
            ) from None

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        body: IO[bytes] | bytes | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        """Send, answering one auth challenge and following same-registry redirects."""
        headers = headers or {}
        challenged = False
        for _ in range(MAX_REDIRECTS + 2):
            if hasattr(body, "seek"):
                body.seek(0)  # type: ignore[union-attr]
            response = self._send(method, url, headers, data=body, **kwargs)
            if response.status_code == 401 and not challenged:
                response.close()
                challenged = True
                self._answer_challenge(response.headers.get("WWW-Authenticate", ""))
                continue
            if response.status_code in REDIRECTS:
                response.close()
                url = urljoin(url, response.headers.get("Location", ""))
                if response.status_code == 303:
                    method, body = "GET", None
                continue
            return response
        raise RegistryError("connection", f"{method} {self.registry}: too many redirects")

    def _answer_challenge(self, header: str) -> None:
        scheme, params = parse_challenge(header)
        if scheme == "basic":
            credentials = required_credentials(self.auth_file, self.registry)
            self._authorization = basic_authorization(credentials)
        elif scheme == "bearer" and "realm" in params:
            self._authorization = "Bearer " + self._fetch_token(params)
        else:
            raise unsupported_challenge(self.registry, scheme)

    def _fetch_token(self, params: dict[str, str]) -> str:
        """The token of a Bearer challenge, asked of its realm (see protocol.token_url)."""
        url = token_url(
            self.base, self.registry, self.repository, self.actions, params, self.insecure
        )
        creds = credentials_for(self.auth_file, self.registry)
        auth = (creds.username, creds.password) if creds else None
        self.stats.requests += 1
        try:
            response = self.session.get(
                url, auth=auth, timeout=self.timeout, allow_redirects=False, stream=True
            )
            with response:
                body = _read_capped(response, MAX_TOKEN_BYTES, f"token {self.registry}")
        except RegistryError as exc:
            if exc.reason != "digest_mismatch":
                raise
            raise RegistryError("auth", exc.detail) from None  # an answer too long
        except requests.RequestException as exc:
            raise RegistryError(
                "connection", f"token {self.registry}: {type(exc).__name__}"
            ) from None
        return token_from_answer(self.registry, response.status_code, body)

    @staticmethod
    def _fail(response: requests.Response, what: str) -> RegistryError:
        response.close()
        code = response.status_code
        return RegistryError(status_reason(code), f"{what}: HTTP {code}")

    # -- manifests -------------------------------------------------------------------------

    def head_manifest(self, target: str) -> Descriptor:
        """The digest and size the tag (or digest) names now: one HEAD request."""
        what = f"{self.registry}/{self.repository}:{target}"
        response = self.request("HEAD", self._url(f"manifests/{target}"), {"Accept": OCI_MANIFEST})
        response.close()
        if response.status_code != 200:
            raise self._fail(response, f"HEAD {what}")
        headers = response.headers
        return descriptor_from_head(
            what,
            target,
            headers.get("Docker-Content-Digest"),
            headers.get("Content-Length"),
            headers.get("Content-Type"),
        )

    def get_manifest(self, digest: str) -> bytes:
        """The manifest bytes, checked against digest (a registry may serve tampered bytes
        under the original digest header)."""
        response = self.request(
            "GET", self._url(f"manifests/{digest}"), {"Accept": OCI_MANIFEST}, stream=True
        )
        with response:
            if response.status_code != 200:
                raise self._fail(response, f"GET manifest {digest}")
            data = _read_capped(response, MAX_MANIFEST_BYTES, f"manifest {digest}")
        self.stats.bytes_received += len(data)
        if sha256_digest(data) != digest:
            raise RegistryError("digest_mismatch", f"manifest {digest}: bytes do not match")
        return data

    def put_manifest(self, tag: str, data: bytes, media_type: str = OCI_MANIFEST) -> str:
        response = self.request(
            "PUT", self._url(f"manifests/{tag}"), {"Content-Type": media_type}, body=data
        )
        response.close()
        if response.status_code not in (200, 201):
            raise self._fail(response, f"PUT manifest {self.repository}:{tag}")
        self.stats.bytes_sent += len(data)
        digest = sha256_digest(data)
        answered = response.headers.get("Docker-Content-Digest", digest)
        if answered != digest:
            raise RegistryError("digest_mismatch", f"PUT manifest: registry stored {answered}")
        return digest

    # -- blobs -----------------------------------------------------------------------------

    def blob_exists(self, digest: str) -> bool:
        response = self.request("HEAD", self._url(f"blobs/{digest}"))
        response.close()
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        raise self._fail(response, f"HEAD blob {digest}")

    def upload_blob(self, digest: str, size: int, source: IO[bytes] | bytes) -> None:
        """Monolithic upload: POST opens a session, one streamed PUT with the digest ends it."""
        response = self.request("POST", self._url("blobs/uploads/"), {"Content-Length": "0"})
        response.close()
        if response.status_code != 202 or "Location" not in response.headers:
            raise self._fail(response, f"POST upload of {digest}")
        location = urljoin(self._url("blobs/uploads/"), response.headers["Location"])
        separator = "&" if "?" in location else "?"
        response = self.request(
            "PUT",
            f"{location}{separator}digest={digest}",
            {"Content-Type": "application/octet-stream", "Content-Length": str(size)},
            body=source,
        )
        response.close()
        if response.status_code != 201:
            raise self._fail(response, f"PUT blob {digest}")
        self.stats.bytes_sent += size

    def _counter(
        self, descriptor: Descriptor, remaining: int, progress: Callable[[int], None] | None
    ) -> Callable[[int], None]:
        deadline = self.clock() + BLOB_FLOOR_SECONDS + remaining / MIN_BYTES_PER_SECOND

        def count(length: int) -> None:
            self.stats.bytes_received += length
            if progress is not None:
                progress(length)
            if self.clock() > deadline:
                raise RegistryError(
                    "connection",
                    f"blob {descriptor.digest}: slower than "
                    f"{MIN_BYTES_PER_SECOND} B/s, stopped (resumed later)",
                )

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
            response = self.request(
                "GET", self._url(f"blobs/{descriptor.digest}"), headers, stream=True
            )
            with response:
                if response.status_code == 200 and offset:
                    hasher, offset = hashlib.sha256(), 0  # the registry ignored Range
                elif response.status_code not in (200, 206) or (
                    response.status_code == 206 and not _range_starts(response, offset)
                ):
                    raise self._fail(response, f"GET blob {descriptor.digest}")
                count = self._counter(descriptor, descriptor.size - offset, progress)
                received = _stream_to(response, part, offset, descriptor, hasher, count)
        else:
            received = 0
        _check_complete(part, descriptor, hasher)
        return received


def _read_capped(response: requests.Response, cap: int, what: str) -> bytes:
    data = bytearray()
    try:
        for chunk in response.iter_content(64 * 1024):
            data += chunk
            if len(data) > cap:
                raise RegistryError("digest_mismatch", f"{what} is larger than {cap} B")
    except requests.RequestException as exc:
        raise RegistryError("connection", f"{what}: {type(exc).__name__}") from None
    return bytes(data)


def _range_starts(response: requests.Response, offset: int) -> bool:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
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
    response: requests.Response,
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
            for chunk in response.iter_content(CHUNK):
                if offset + received + len(chunk) > descriptor.size:
                    part.unlink()
                    raise RegistryError(
                        "digest_mismatch",
                        f"blob {descriptor.digest} is longer than {descriptor.size} B",
                    )
                out.write(chunk)
                hasher.update(chunk)
                received += len(chunk)
                count(len(chunk))
        except requests.RequestException as exc:
            raise RegistryError(
                "connection",
                f"blob {descriptor.digest} after {offset + received} B: {type(exc).__name__}",
            ) from None
        finally:
            out.flush()
            os.fsync(out.fileno())  # keep what arrived: the next attempt resumes from it
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
