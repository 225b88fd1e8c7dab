"""A hostile registry, token realm or man in the middle against the stdlib registry client.

Every exchange is with a raw-socket server on 127.0.0.1 whose answer bytes are scripted
(or drawn by hypothesis). What must hold whatever it sends: each call ends in a
RegistryError whose reason is a pull failure reason (never another exception type), no
credential is in a message or Stats.paths, a blob is returned only when the ``.part``
file holds exactly its bytes, and every exchange ends (small ``timeout=``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from service.errors import PULL_FAILURE_REASONS
from service.jobs.pull import PullJob
from service.layout import Layout
from service.oci.check import SourceCheck
from service.oci.client import RegistryClient
from service.oci.protocol import TLS_FAILED, Descriptor, RegistryError
from service.oci.reference import parse_reference
from service.pull_metrics import PullMetrics

REPO = "m/f"
FAST = (0.3, 0.3)
BLOB = b"hostile registry blob " * 8
BLOB_DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
DESC = Descriptor("application/octet-stream", BLOB_DIGEST, len(BLOB))
MANIFEST = b'{"schemaVersion": 2}'
MDIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
OTHER = "sha256:" + "0" * 64
PASSWORD = "PASSWORD-s3cret-9d1"
TOKEN = "TOKEN-s3cret-77e"
BASIC = base64.b64encode(f"user:{PASSWORD}".encode()).decode()
SECRETS = (PASSWORD, BASIC, TOKEN)


def sweep(max_examples: int, shrink: bool = True) -> Any:
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if shrink else [])
    return settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=phases,
    )


# -- a raw-socket registry ------------------------------------------------------------------

Answer = tuple[bytes, str]  # the bytes, then: close | keep | hold | reset | half


class Raw:
    """Answers the n-th request on 127.0.0.1 with ``script(n, head)``; records requests."""

    def __init__(self, script: Callable[[int, bytes], Answer], tls: ssl.SSLContext | None = None):
        self.script = script
        self.tls = tls
        self.requests: list[bytes] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.threads: list[threading.Thread] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            t = threading.Thread(target=self._serve_safely, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve_safely(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(3.0)
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            self._serve(conn)
        except (OSError, ValueError):
            pass
        finally:
            conn.close()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        while not self.stop.is_set():
            while b"\r\n\r\n" not in buf:
                data = conn.recv(65536)
                if not data or len(buf) > 1 << 20:
                    return
                buf += data
            head, _, buf = buf.partition(b"\r\n\r\n")
            match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            need = int(match.group(1)) if match else 0
            while len(buf) < need:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            buf = buf[need:]
            with self.lock:
                index = len(self.requests)
                self.requests.append(head)
            data, ending = self.script(index, head)
            conn.sendall(data)
            if ending == "keep":
                continue
            if ending == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif ending == "half":
                conn.shutdown(socket.SHUT_WR)
                conn.recv(1)
            elif ending == "hold":
                conn.recv(1)  # until the client hangs up (or 3 s)
            return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        self.thread.join(5)
        for t in self.threads:
            t.join(5)


def scripted(answers: list[Answer]) -> Callable[[int, bytes], Answer]:
    return lambda n, head: answers[n] if n < len(answers) else (b"", "close")


def http(status: str, headers: dict[str, str] | list[tuple[str, str]], body: bytes = b"") -> bytes:
    items = headers.items() if isinstance(headers, dict) else headers
    lines = [f"HTTP/1.1 {status}".encode()] + [f"{k}: {v}".encode("latin-1") for k, v in items]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@pytest.fixture
def server() -> Iterator[Callable[..., Raw]]:
    made: list[Raw] = []

    def make(answers: list[Answer] | Callable[[int, bytes], Answer], **kw: Any) -> Raw:
        raw = Raw(answers if callable(answers) else scripted(answers), **kw)
        made.append(raw)
        return raw

    yield make
    for raw in made:
        raw.close()


def auth_file(directory: Path, host: str) -> Path:
    path = directory / "auth.json"
    path.write_text(json.dumps({"auths": {host: {"auth": BASIC}}}))
    return path


def check(raw: Raw, **kw: Any) -> SourceCheck:
    kw.setdefault("insecure", frozenset({raw.host}))
    return SourceCheck(raw.host, REPO, timeout=FAST, **kw)


def client(raw: Raw, **kw: Any) -> RegistryClient:
    kw.setdefault("insecure", frozenset({raw.host}))
    return RegistryClient(raw.host, REPO, timeout=FAST, actions="pull,push", **kw)


def pull_job(raw: Raw, root: Path) -> PullJob:
    """A PullJob following ``t`` on the raw registry, on a new volume at root."""
    (root / "staging").mkdir(parents=True)
    (root / "versions").mkdir()
    return PullJob(
        Layout(root, root / "staging", root / "current"),
        parse_reference(f"oci://{raw.host}/{REPO}:t"),
        check(raw),
        lambda: client(raw),
        PullMetrics(CollectorRegistry()),
    )


def failure(call: Callable[[], object]) -> RegistryError:
    """The RegistryError ``call`` must raise; any other exception fails the test."""
    with pytest.raises(RegistryError) as info:
        call()
    assert info.value.reason in PULL_FAILURE_REASONS
    return info.value


def no_secret(*texts: object) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in str(text)


OK_HEAD = http("200 OK", {"Docker-Content-Digest": MDIGEST, "Content-Length": "20"})


# -- found by this file (each failed before its fix) ---------------------------------


@pytest.mark.parametrize("length", ["\xb2", "9" * 5000], ids=["superscript-two", "5000-digits"])
def test_head_content_length_that_isdigit_but_not_int_is_a_registry_error(
    server: Callable[..., Raw], length: str
) -> None:
    """A HEAD answer whose Content-Length is "²" or 5000 digits ends in a RegistryError
    (connection), not a ValueError."""
    raw = server(
        [(http("200 OK", {"Docker-Content-Digest": MDIGEST, "Content-Length": length}), "close")]
    )
    failure(lambda: check(raw).head_manifest("t"))


def test_pull_job_run_never_raises_on_a_hostile_head(
    server: Callable[..., Raw], tmp_path: Path
) -> None:
    """PullJob.run returns a failed result for a HEAD whose Content-Length is '²'."""
    raw = server(
        [(http("200 OK", {"Docker-Content-Digest": MDIGEST, "Content-Length": "\xb2"}), "close")]
    )
    result = pull_job(raw, tmp_path / "models").run()
    assert (result.outcome, result.reason) == ("failed", "connection")


def test_resume_answered_with_a_5000_digit_content_range_is_a_registry_error(
    server: Callable[..., Raw], tmp_path: Path
) -> None:
    """A 206 to a resume whose Content-Range start has 5000 digits ends in a RegistryError."""
    part = tmp_path / "blob.part"
    part.write_bytes(BLOB[:10])
    start = "1" + "0" * 4999
    raw = server(
        [
            (
                http("206 Partial", {"Content-Range": f"bytes {start}-", "Content-Length": "0"}),
                "close",
            )
        ]
    )
    failure(lambda: client(raw).download_blob(DESC, part))


@pytest.mark.parametrize("location", ["/v2/caf\xe9", "http://[::1"], ids=["latin1", "bad-ipv6"])
def test_redirect_to_an_unusable_location_is_a_registry_error(
    server: Callable[..., Raw], location: str
) -> None:
    """A 307 whose Location has a non-ASCII byte or a broken IPv6 host fails as connection."""
    raw = server([(http("307 R", {"Location": location, "Content-Length": "0"}), "close")])
    failure(lambda: check(raw).head_manifest("t"))


def test_upload_session_at_an_unusable_location_is_a_registry_error(
    server: Callable[..., Raw],
) -> None:
    """A 202 to the upload POST whose Location has a non-ASCII byte ends in a RegistryError."""
    raw = server(
        [(http("202 Accepted", {"Location": "/up/caf\xe9", "Content-Length": "0"}), "close")]
    )
    failure(lambda: client(raw).upload_blob(BLOB_DIGEST, len(BLOB), BLOB))


def test_token_outside_latin1_is_an_auth_failure(server: Callable[..., Raw]) -> None:
    """A realm's token with a character outside latin-1 ('€') ends in a RegistryError."""
    challenge = http("401 U", {"WWW-Authenticate": 'Bearer realm="/token"', "Content-Length": "0"})
    body = json.dumps({"token": "tok\u20ac"}).encode()
    raw = server(
        [(challenge, "close"), (http("200 OK", {"Content-Length": str(len(body))}, body), "close")]
    )
    failure(lambda: check(raw).head_manifest("t"))


@pytest.mark.parametrize("realm", ["http://[::1", "/tok\xe9n"], ids=["bad-ipv6", "latin1-path"])
def test_realm_that_is_no_url_is_an_auth_failure(server: Callable[..., Raw], realm: str) -> None:
    """A Bearer realm with a broken IPv6 host or a non-ASCII path ends in a RegistryError."""
    challenge = http(
        "401 U", {"WWW-Authenticate": f'Bearer realm="{realm}"', "Content-Length": "0"}
    )
    raw = server([(challenge, "close")])
    failure(lambda: check(raw).head_manifest("t"))


def test_early_hints_before_the_answer_are_skipped(server: Callable[..., Raw]) -> None:
    """A 103 Early Hints interim answer before the 200 leaves the 200 as the check's answer."""
    raw = server([(http("103 Early Hints", {"Link": "</x>"}) + OK_HEAD, "close")])
    assert check(raw).head_manifest("t").digest == MDIGEST


class Dribbler:
    """A TLS port that sends a handshake record header, then one byte every 20 ms."""

    def __init__(self, total: int = 150) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.total = total
        self.sent = 0
        self.client_left = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.recv(65536)  # the ClientHello
            conn.sendall(b"\x16\x03\x03\x40\x00")
            try:
                for _ in range(self.total):
                    conn.sendall(b"\x02")
                    self.sent += 1
                    time.sleep(0.02)
            except OSError:
                self.client_left.set()

    def close(self) -> None:
        self.sock.close()
        self.thread.join(10)


def test_dribbled_tls_handshake_ends_within_the_exchange_deadline(certs: dict[str, Path]) -> None:
    """A TLS server dribbling its handshake is given up while it is still sending."""
    dribbler = Dribbler()
    try:
        source = SourceCheck(
            f"127.0.0.1:{dribbler.port}", REPO, ca_file=certs["good"], timeout=FAST
        )
        failure(lambda: source.head_manifest("t"))
        dribbler.thread.join(10)
        assert dribbler.client_left.is_set()  # hung up before all 150 bytes (3 s) arrived
    finally:
        dribbler.close()


# -- TLS ------------------------------------------------------------------------------------

OPENSSL_CA = """[ca]
default_ca = d
[d]
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = p
copy_extensions = copy
unique_subject = no
[p]
commonName = supplied
"""


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Self-signed CA:TRUE certificates: good (IP 127.0.0.1), other (DNS other.example), expired."""
    d = tmp_path_factory.mktemp("certs")
    (d / "index.txt").write_text("")
    (d / "serial").write_text("01\n")
    (d / "ca.cnf").write_text(OPENSSL_CA)
    out: dict[str, Path] = {}
    for name, san, dates in [
        ("good", "IP:127.0.0.1", ["-startdate", "20200101000000Z", "-enddate", "20990101000000Z"]),
        (
            "other",
            "DNS:other.example",
            ["-startdate", "20200101000000Z", "-enddate", "20990101000000Z"],
        ),
        (
            "expired",
            "IP:127.0.0.1",
            ["-startdate", "20000101000000Z", "-enddate", "20010101000000Z"],
        ),
    ]:
        key, csr, crt = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.pem"
        subprocess.run(
            [
                "openssl",
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                key,
                "-out",
                csr,
                "-subj",
                f"/CN={name}",
                "-addext",
                f"subjectAltName={san}",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
            ],
            cwd=d,
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                "openssl",
                "ca",
                "-batch",
                "-config",
                "ca.cnf",
                "-selfsign",
                "-keyfile",
                key,
                "-in",
                csr,
                "-out",
                crt,
                *dates,
            ],
            cwd=d,
            check=True,
            capture_output=True,
        )
        out[name] = crt
        out[name + "-key"] = key
    return out


def tls_server(certs: dict[str, Path], name: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs[name], certs[name + "-key"])
    return context


def test_tls_registry_with_a_trusted_certificate_is_checked(
    server: Callable[..., Raw], certs: dict[str, Path]
) -> None:
    """The control: a registry whose certificate REGISTRY_CA_FILE trusts answers the check."""
    raw = server([(OK_HEAD, "close")], tls=tls_server(certs, "good"))
    source = SourceCheck(raw.host, REPO, ca_file=certs["good"], timeout=FAST)
    assert source.head_manifest("t").digest == MDIGEST


@pytest.mark.parametrize("name", ["other", "expired"])
def test_tls_certificate_for_another_name_or_expired_fails_as_connection(
    server: Callable[..., Raw], certs: dict[str, Path], name: str
) -> None:
    """A certificate for another name, or an expired one, is a TLS failure; no request sent."""
    raw = server([(OK_HEAD, "close")], tls=tls_server(certs, name))
    for kind in (SourceCheck, RegistryClient):
        source = kind(raw.host, REPO, ca_file=certs[name], timeout=FAST)
        error = failure(lambda s=source: s.head_manifest("t"))
        assert error.reason == "connection" and TLS_FAILED in error.detail
    assert raw.requests == []


def test_plaintext_on_the_tls_port_fails_as_connection(
    server: Callable[..., Raw], certs: dict[str, Path]
) -> None:
    """A plain-HTTP answer where TLS is expected is a connection failure."""
    raw = server([(OK_HEAD, "close")])
    failure(
        lambda: SourceCheck(raw.host, REPO, ca_file=certs["good"], timeout=FAST).head_manifest("t")
    )


# -- classes with no bug found --------------------------------------------------------------


@pytest.mark.parametrize(
    "realm",
    ["file:///etc/passwd", "ftp://{host}/t", "http://user@{host}/t", "http://127.0.0.1:1/t"],
)
def test_token_realm_not_https_nor_the_registry_is_refused_unasked(
    server: Callable[..., Raw], tmp_path: Path, realm: str
) -> None:
    """file:, ftp:, userinfo and other-port plain-HTTP realms are refused as auth, never asked."""
    raw = server([])
    challenge = http(
        "401 U",
        {
            "WWW-Authenticate": f'Bearer realm="{realm.format(host=raw.host)}"',
            "Content-Length": "0",
        },
    )
    raw.script = scripted([(challenge, "close")])
    error = failure(lambda: check(raw, auth_file=auth_file(tmp_path, raw.host)).head_manifest("t"))
    assert error.reason == "auth"
    assert len(raw.requests) == 1
    no_secret(error)


def test_redirect_loop_ends_as_connection(server: Callable[..., Raw]) -> None:
    """A registry redirecting to itself for ever is given up after a few hops."""
    raw = server(
        lambda n, head: (http("307 R", {"Location": "/v2/loop", "Content-Length": "0"}), "keep")
    )
    error = failure(lambda: client(raw).head_manifest("t"))
    assert error.reason == "connection" and len(raw.requests) <= 6


@pytest.mark.parametrize(
    "form", ["http://localhost:{port}/x", "http://[::1]:{port}/x", "https://{host}/x"]
)
def test_redirect_to_another_form_of_the_registry_is_refused(
    server: Callable[..., Raw], form: str
) -> None:
    """localhost, [::1] or https forms of the same registry are other origins: not contacted."""
    raw = server([])
    location = form.format(port=raw.port, host=raw.host)
    raw.script = scripted([(http("302 F", {"Location": location, "Content-Length": "0"}), "keep")])
    error = failure(lambda: check(raw).head_manifest("t"))
    assert "refused" in error.detail and len(raw.requests) == 1


def test_endless_401_is_auth_after_one_answered_challenge(
    server: Callable[..., Raw], tmp_path: Path
) -> None:
    """A registry answering 401 to every request fails as auth, the password not in the message."""
    challenge = http("401 U", {"WWW-Authenticate": 'Basic realm="r"', "Content-Length": "0"})
    raw = server(lambda n, head: (challenge, "keep"))
    source = check(raw, auth_file=auth_file(tmp_path, raw.host))
    error = failure(lambda: source.head_manifest("t"))
    assert error.reason == "auth" and len(raw.requests) == 2
    no_secret(error, source.stats.paths)


@pytest.mark.parametrize(
    "token", ["a\r\nb", "a\x00b", "t" * (1024 * 1024)], ids=["crlf", "nul", "1MB"]
)
def test_unusable_token_is_an_auth_failure_never_sent(
    server: Callable[..., Raw], token: str
) -> None:
    """A token with CR/LF or NUL, or 1 MB long, is refused as auth; the registry never gets it."""
    challenge = http("401 U", {"WWW-Authenticate": 'Bearer realm="/token"', "Content-Length": "0"})
    body = json.dumps({"token": token}).encode()
    raw = server(
        [(challenge, "close"), (http("200 OK", {"Content-Length": str(len(body))}, body), "close")]
    )
    assert failure(lambda: check(raw).head_manifest("t")).reason == "auth"
    assert len(raw.requests) == 2


def test_manifest_with_a_lying_digest_header_is_digest_mismatch(server: Callable[..., Raw]) -> None:
    """Manifest bytes that are not the asked digest fail as digest_mismatch whatever the headers."""
    body = b'{"schemaVersion": 3}'
    headers = {"Docker-Content-Digest": MDIGEST, "Content-Length": str(len(body))}
    raw = server([(http("200 OK", headers, body), "close")])
    assert failure(lambda: client(raw).get_manifest(MDIGEST)).reason == "digest_mismatch"


def test_206_without_a_range_and_longer_200_never_return_a_wrong_blob(
    server: Callable[..., Raw], tmp_path: Path
) -> None:
    """A 206 to a fresh GET from another offset, or a 200 longer than the descriptor, fail."""
    part = tmp_path / "b.part"
    partial = http(
        "206 P", {"Content-Range": "bytes 5-", "Content-Length": str(len(BLOB) - 5)}, BLOB[5:]
    )
    longer = http("200 OK", {"Content-Length": str(len(BLOB) + 1)}, BLOB + b"x")
    raw = server([(partial, "close"), (longer, "close")])
    failure(lambda: client(raw).download_blob(DESC, part))
    assert failure(lambda: client(raw).download_blob(DESC, part)).reason == "digest_mismatch"
    assert not part.exists()


# -- generated hostile answers --------------------------------------------------------------


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)


STATUS_LINES = [
    b"HTTP/1.1 200 OK",
    b"HTTP/1.0 200 OK",
    b"HTTP/1.1 206 Partial",
    b"HTTP/1.1 201 Created",
    b"HTTP/1.1 202 Accepted",
    b"HTTP/1.1 401 U",
    b"HTTP/1.1 403 F",
    b"HTTP/1.1 404 N",
    b"HTTP/1.1 307 R",
    b"HTTP/1.1 303 S",
    b"HTTP/1.1 500 E",
    b"HTTP/1.1 999 X",
    b"HTTP/1.1 -1 X",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK",
    b"HTTP/0.9",
    b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\nHTTP/1.1 200 OK",
    b"",
    b"SSH-2.0-OpenSSH",
    b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70000,
]
HEADER_VALUES: dict[bytes, list[bytes]] = {
    b"Content-Length": [
        b"0",
        b"5",
        str(len(BLOB)).encode(),
        str(len(MANIFEST)).encode(),
        b"-1",
        b"abc",
        b"1, 2",
        b"99999999999",
        b" 7 ",
        b"0x10",
        b"\xb2",
        b"9" * 5000,
    ],
    b"Transfer-Encoding": [b"chunked", b"gzip, chunked", b"identity", b"chunked, chunked", b"br"],
    b"Docker-Content-Digest": [
        BLOB_DIGEST.encode(),
        MDIGEST.encode(),
        OTHER.encode(),
        b"sha256:../../etc/passwd",
        b"",
        b"sha256:" + b"A" * 64,
        b"md5:abc",
        MDIGEST.encode() + b"\x00",
    ],
    b"Content-Range": [
        b"bytes 0-",
        b"bytes 3-",
        b"bytes 5-9/10",
        b"bytes */10",
        b"bytes -3-",
        b"items 0-1",
        b"bytes 99999999999999999999-",
        b"bytes " + b"1" * 5000 + b"-",
        b"bytes \xb3-",
    ],
    b"Location": [
        b"/v2/m/f/blobs/x",
        b"/up?x=1",
        b"//127.0.0.1:1/x",
        b"http://127.0.0.1:1/x",
        b"ftp://x/",
        b"",
        b"http://{host}/v2/again",
        b"https://{host}/x",
        b"http://localhost:{port}/x",
        b"/v2/caf\xe9",
        b"http://[::1",
        b"http://{host}:x/",
    ],
    b"WWW-Authenticate": [
        b'Basic realm="r"',
        b'Bearer realm="/token",service="s"',
        b'Bearer realm="http://{host}/token"',
        b'Bearer realm="file:///etc/passwd"',
        b'Bearer realm="ftp://127.0.0.1/"',
        b'Bearer realm="http://user@{host}/t"',
        b"Bearer",
        b'Digest realm="x"',
        b'Bearer realm="https://{host}/t"',
        b'Bearer realm="' + b"r" * 20000 + b'"',
        b"Basic",
        b'Bearer realm="http://[::1"',
        b'Bearer realm="/t\xe9ken"',
    ],
    b"Connection": [b"close", b"keep-alive"],
    b"Content-Type": [b"application/vnd.oci.image.manifest.v1+json", b";;;", b""],
}
TOKEN_BODY = json.dumps({"token": TOKEN}).encode()
BODIES = [
    b"",
    BLOB,
    BLOB[:5],
    BLOB + b"extra",
    MANIFEST,
    chunked(BLOB),
    chunked(MANIFEST),
    b"ffffffffffff\r\nabc",
    b"-5\r\nabcdef",
    b"0\r\n\r\n",
    TOKEN_BODY,
    b'{"access_token": 5}',
    b'{"token": "' + b"t" * 70000 + b'"}',
    '{"token": "t\u20ac"}'.encode(),
    b"x" * 200000,
]

header_line = st.one_of(
    st.sampled_from(sorted(HEADER_VALUES)).flatmap(
        lambda name: st.sampled_from(HEADER_VALUES[name]).map(lambda v: name + b": " + v)
    ),
    # arbitrary header lines, never a continuation (obs-fold) of a Location above
    st.binary(max_size=60).map(lambda b: b"X-" + b),
)
answer = st.tuples(
    st.one_of(st.sampled_from(STATUS_LINES), st.binary(max_size=30)),
    st.lists(header_line, max_size=5),
    st.one_of(st.sampled_from(BODIES), st.binary(max_size=300)),
    st.sampled_from(["close", "keep", "hold", "reset", "half"]),
    st.booleans(),  # whether the headers end (else the answer is cut inside them)
)
OPERATIONS = [
    "check_head",
    "client_head",
    "get_manifest",
    "download",
    "resume",
    "upload",
    "put_manifest",
]
RAN = {"examples": 0}


def build(raw: Raw, drawn: tuple[bytes, list[bytes], bytes, str, bool]) -> Answer:
    status, headers, body, ending, complete = drawn
    head = b"\r\n".join([status, *headers])
    head = head.replace(b"{host}", raw.host.encode()).replace(b"{port}", str(raw.port).encode())
    return (head + b"\r\n\r\n" + body if complete else head, ending)


def run_operation(op: str, raw: Raw, auth: Path, part: Path) -> tuple[object, Any]:
    if op == "check_head":
        source = check(raw, auth_file=auth)
        return source, lambda: source.head_manifest("t")
    c = client(raw, auth_file=auth)
    calls: dict[str, Callable[[], object]] = {
        "client_head": lambda: c.head_manifest("t"),
        "get_manifest": lambda: c.get_manifest(MDIGEST),
        "download": lambda: c.download_blob(DESC, part),
        "resume": lambda: c.download_blob(DESC, part),
        "upload": lambda: c.upload_blob(BLOB_DIGEST, len(BLOB), BLOB),
        "put_manifest": lambda: c.put_manifest("t", MANIFEST),
    }
    return c, calls[op]


@sweep(120)
@given(op=st.sampled_from(OPERATIONS), answers=st.lists(answer, min_size=1, max_size=3))
def test_any_hostile_answer_ends_in_a_registry_error_or_a_verified_result(
    tmp_path: Path, op: str, answers: list[Any]
) -> None:
    """Whatever bytes the registry (or realm) answers, each call returns verified data or raises
    a RegistryError with a pull failure reason, naming no credential."""
    RAN["examples"] += 1
    raw = Raw(scripted([]))
    try:
        raw.script = scripted([build(raw, a) for a in answers])
        auth = auth_file(tmp_path, raw.host)
        part = tmp_path / "b.part"
        part.unlink(missing_ok=True)
        if op == "resume":
            part.write_bytes(BLOB[:3])
        who, call = run_operation(op, raw, auth, part)
        try:
            result = call()
        except RegistryError as exc:
            assert exc.reason in PULL_FAILURE_REASONS
            no_secret(exc, exc.detail)
        else:
            if op == "get_manifest":
                assert result == MANIFEST
            if op in ("download", "resume"):
                assert part.read_bytes() == BLOB
            if op == "check_head" or op == "client_head":
                assert result.digest.startswith("sha256:")  # type: ignore[attr-defined]
        no_secret(who.stats.paths)  # type: ignore[attr-defined]
        who.close()  # type: ignore[attr-defined]
    finally:
        raw.close()


@sweep(60)
@given(answers=st.lists(answer, min_size=1, max_size=4))
def test_pull_job_run_never_raises_whatever_the_registry_answers(
    tmp_path_factory: pytest.TempPathFactory, answers: list[Any]
) -> None:
    """Whatever the registry answers to the check and the download, PullJob.run returns
    a result (counted, never raised) and stages nothing it did not verify."""
    root = tmp_path_factory.mktemp("volume") / "models"
    raw = Raw(scripted([]))
    try:
        raw.script = scripted([build(raw, a) for a in answers])
        result = pull_job(raw, root).run()
        assert result.outcome in ("failed", "up_to_date", "known", "waiting", "staged")
        if result.outcome == "failed":
            assert result.reason in PULL_FAILURE_REASONS
        assert result.outcome == "staged" or os.listdir(root / "staging") == []
    finally:
        raw.close()
