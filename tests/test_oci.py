"""service.oci: references, the auth file, the artifact's shape and the registry client."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from registry import Registry

from service.errors import ConfigError
from service.oci import artifact
from service.oci.artifact import LAYER_MEDIA_TYPE, Layer, build_manifest, parse_manifest
from service.oci.auth import AuthFileError, Credentials, credentials_for, parse_auth_file
from service.oci.check import SourceCheck
from service.oci.client import RegistryClient
from service.oci.protocol import Descriptor, RegistryError, sha256_digest
from service.oci.push import PushRefused, push_bundle
from service.oci.reference import Reference, parse_insecure, parse_reference, source_reference
from tests.support import serve_http, sha256

DIGEST = "sha256:" + "ab" * 32


# -- references ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("oci://127.0.0.1:5000/models/f:stable", Reference("127.0.0.1:5000", "models/f", "stable")),
        (
            "oci://Registry.Example.com/a/b-c/d_e:v1.2-rc",
            Reference("registry.example.com", "a/b-c/d_e", "v1.2-rc"),
        ),
        (f"oci://localhost:5000/f@{DIGEST}", Reference("localhost:5000", "f", None, DIGEST)),
        (f"oci://r.io/f:canary@{DIGEST}", Reference("r.io", "f", "canary", DIGEST)),
        ("oci://[::1]:5000/f:t", Reference("[::1]:5000", "f", "t")),
    ],
)
def test_valid_references_parse(text: str, expected: Reference) -> None:
    """Tags, digests, host:port and IPv6 literals parse into their parts."""
    assert parse_reference(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "127.0.0.1:5000/models/f:stable",  # no scheme for SOURCE
        "oci://127.0.0.1:5000/models/f",  # neither tag nor digest
        "oci://r.io/Models/f:t",  # upper case repository
        "oci://r.io/f@sha256:abc",  # short digest
        f"oci://r.io/f@sha512:{'a' * 128}",
        "oci://r.io/f:t g",
        "oci:///f:t",
        "oci://r.io/:t",
        "oci://user:pw@r.io/f:t",  # credentials never in a reference
        "http://r.io/f:t",
        "oci://r.io/f:" + "t" * 129,
    ],
)
def test_invalid_references_are_refused(text: str) -> None:
    """References without a target, with bad names or credentials: ValueError."""
    with pytest.raises(ValueError):
        parse_reference(text)


def test_source_error_names_the_variable() -> None:
    """An invalid SOURCE is a ConfigError whose one-line message names SOURCE."""
    with pytest.raises(ConfigError, match=r"^SOURCE: "):
        source_reference("oci://r.io/f")


@settings(max_examples=500)
@given(
    st.text(max_size=80)
    | st.from_regex(r"oci://[a-z0-9.:\[\]@-]{0,20}/[a-zA-Z0-9/._:@-]{0,40}", fullmatch=True)
)
def test_any_text_is_a_reference_or_a_value_error(text: str) -> None:
    """Arbitrary text: a Reference that prints back to an equal one, or ValueError."""
    try:
        ref = parse_reference(text)
    except ValueError:
        return
    assert parse_reference(str(ref)) == Reference(
        ref.registry, ref.repository, None if ref.digest else ref.tag, ref.digest
    )


def test_insecure_list_parses_and_names_the_variable() -> None:
    """SOURCE_INSECURE: comma-separated host:port, spaces ignored; a URL is refused."""
    assert parse_insecure(" 127.0.0.1:5000, reg.local:80 ,") == {"127.0.0.1:5000", "reg.local:80"}
    assert parse_insecure(None) == frozenset()
    with pytest.raises(ConfigError, match=r"^SOURCE_INSECURE: "):
        parse_insecure("http://reg.local:80")


# -- the auth file -------------------------------------------------------------------------


def auth_json(entries: dict[str, Any]) -> bytes:
    return json.dumps({"auths": entries}).encode()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_auth_file_entries_by_host() -> None:
    """auths keys as Docker writes them (scheme, path) map to host[:port]."""
    found = parse_auth_file(
        Path("c.json"),
        auth_json(
            {
                "https://Reg.Example.com/v1/": {"auth": b64("u:p:with:colons")},
                "127.0.0.1:5000": {"auth": b64("fleet:pw")},
                "helper.io": {},  # a credential helper's entry: no auth, used anonymously
            }
        ),
    )
    assert found == {
        "reg.example.com": Credentials("u", "p:with:colons"),
        "127.0.0.1:5000": Credentials("fleet", "pw"),
    }


def test_bad_auth_entry_names_the_file_not_the_secret(tmp_path: Path) -> None:
    """An auth value that is not base64 of user:password: one line naming the file, and the
    value is not in the message."""
    path = tmp_path / "config.json"
    path.write_bytes(auth_json({"r.io": {"auth": b64("no-colon-secret")}}))
    with pytest.raises(AuthFileError) as info:
        credentials_for(path, "r.io")
    assert str(path) in str(info.value)
    assert "no-colon-secret" not in str(info.value) and b64("no-colon-secret") not in str(
        info.value
    )


def test_missing_auth_file_means_anonymous(tmp_path: Path) -> None:
    """No auth file: no credentials (anonymous pulls work)."""
    assert credentials_for(tmp_path / "none.json", "r.io") is None


def test_password_is_not_in_the_repr() -> None:
    """Credentials never show the password in a repr (logs of a dataclass)."""
    assert "hunter2" not in repr(Credentials("u", "hunter2"))


@settings(max_examples=300)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3)
        ),
        max_leaves=12,
    )
)
def test_any_json_is_credentials_or_auth_file_error(value: Any) -> None:
    """Arbitrary JSON in the auth file: a credentials map or AuthFileError, nothing else."""
    for document in (value, {"auths": value}, {"auths": {"r.io": value}}):
        try:
            found = parse_auth_file(Path("c.json"), json.dumps(document).encode())
        except AuthFileError as exc:
            assert "c.json" in str(exc)
        else:
            assert all(isinstance(c, Credentials) for c in found.values())


# -- the artifact's shape ------------------------------------------------------------------


def layer_json(
    title: Any, digest: str = DIGEST, size: int = 1, media: str = artifact.LAYER_MEDIA_TYPE
) -> dict[str, Any]:
    return {
        "mediaType": media,
        "digest": digest,
        "size": size,
        "annotations": {artifact.TITLE: title},
    }


def test_manifest_round_trip() -> None:
    """build_manifest's layers parse back (sorted by path)."""
    layers = [Layer("z/model.onnx", DIGEST, 10), Layer("manifest.json", sha256_digest(b"{}"), 2)]
    assert parse_manifest(build_manifest(layers)) == sorted(layers, key=lambda la: la.path)


@pytest.mark.parametrize(
    "title",
    [
        "../x",
        "/etc/passwd",
        "a/../../x",
        "",
        ".",
        "READY",
        None,
        "a\x00b",
        7,
        "d/" + "n" * 256,
        "x" * 5000,
    ],
)
def test_unsafe_titles_are_refused(title: Any) -> None:
    """Titles that leave the bundle or are not paths: digest_mismatch (not a bundle)."""
    data = json.dumps({"layers": [layer_json(title)]}).encode()
    with pytest.raises(RegistryError) as info:
        parse_manifest(data)
    assert info.value.reason == "digest_mismatch"


def test_duplicate_and_nested_titles_are_refused() -> None:
    """Two layers with one path, or a file inside another file: refused."""
    for titles in (["a", "./a"], ["a", "a/b"]):
        data = json.dumps({"layers": [layer_json(t) for t in titles]}).encode()
        with pytest.raises(RegistryError):
            parse_manifest(data)


def test_foreign_layer_media_type_is_refused() -> None:
    """A container image (tar layers) is not a bundle: refused."""
    data = json.dumps(
        {"layers": [layer_json("x", media="application/vnd.oci.image.layer.v1.tar+gzip")]}
    ).encode()
    with pytest.raises(RegistryError, match="not a bundle artifact"):
        parse_manifest(data)


@settings(max_examples=500)
@given(st.lists(st.text(alphabet="ab./\\\x00 READY", max_size=12), min_size=1, max_size=6))
def test_hostile_titles_parse_to_safe_paths_or_are_refused(titles: list[str]) -> None:
    """Arbitrary titles: every accepted path is relative, inside the bundle, distinct."""
    data = json.dumps({"layers": [layer_json(t) for t in titles]}).encode()
    try:
        layers = parse_manifest(data)
    except RegistryError as exc:
        assert exc.reason == "digest_mismatch"
        return
    paths = [layer.path for layer in layers]
    assert len(set(paths)) == len(paths)
    for path in paths:
        assert not path.startswith("/") and ".." not in path.split("/")
        resolved = os.path.normpath(os.path.join("/bundle", path))
        assert resolved.startswith("/bundle/")


# -- the client against the real registry --------------------------------------------------


def client_for(reg: Registry, actions: str = "pull,push") -> RegistryClient:
    return RegistryClient(reg.host, "m/f", insecure=frozenset({reg.host}), actions=actions)


@pytest.mark.registry
def test_pinned_digest_reference_heads_that_digest(tmp_path: Path, registry: Registry) -> None:
    """HEAD by digest answers that digest; a tag answers the digest it names."""
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "m").write_bytes(b"x")
    pushed = push_bundle(client_for(registry), "t", tmp_path / "b")
    client = client_for(registry, "pull")
    assert client.head_manifest("t").digest == pushed.digest
    assert client.head_manifest(pushed.digest).digest == pushed.digest


@pytest.mark.registry
def test_tampered_manifest_in_storage_is_digest_mismatch(
    tmp_path: Path, registry: Registry
) -> None:
    """The registry serves a manifest changed in its storage under the old digest: refused."""
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "m").write_bytes(b"x")
    pushed = push_bundle(client_for(registry), "t", tmp_path / "b")
    stored = registry.blob_path(pushed.digest)
    stored.write_bytes(stored.read_bytes().replace(b'"size":1', b'"size":2'))
    with pytest.raises(RegistryError) as info:
        client_for(registry, "pull").get_manifest(pushed.digest)
    assert info.value.reason == "digest_mismatch"


@pytest.mark.registry
def test_push_skips_blobs_already_there(tmp_path: Path, registry: Registry) -> None:
    """Pushing the same bundle twice uploads nothing the second time."""
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "m").write_bytes(os.urandom(1000))
    first = push_bundle(client_for(registry), "t", tmp_path / "b", {"manifest.json": b"{}"})
    again = client_for(registry)
    second = push_bundle(again, "t", tmp_path / "b", {"manifest.json": b"{}"})
    assert (first.uploaded, second.uploaded, second.digest) == (2, 0, first.digest)
    assert not [p for p in again.stats.paths if p.startswith(("POST", "PATCH"))]


CHUNK = 4096


@pytest.mark.registry
@pytest.mark.parametrize("size", [CHUNK, CHUNK + 1, 3 * CHUNK - 1, 3 * CHUNK + 1])
def test_blob_over_the_upload_chunk_goes_up_in_patches(
    tmp_path: Path, registry: Registry, size: int
) -> None:
    """A blob over upload_chunk is sent in ceil(size / chunk) PATCHes and an empty PUT
    (one at most a chunk: in the PUT alone); the registry serves it byte for byte."""
    data = os.urandom(size)
    digest = "sha256:" + sha256(data)
    client = client_for(registry)
    client.upload_chunk = CHUNK
    client.upload_blob(digest, size, io.BytesIO(data))
    patches = -(-size // CHUNK) if size > CHUNK else 0
    assert registry.requests("PATCH", "/blobs/uploads/") == patches
    part = tmp_path / "blob"
    client.download_blob(Descriptor(LAYER_MEDIA_TYPE, digest, size), part)
    assert part.read_bytes() == data


@pytest.mark.registry
def test_chunked_push_of_a_bundle_pulls_back_whole(tmp_path: Path, registry: Registry) -> None:
    """A bundle pushed with a small upload_chunk from files on disk: every layer pulls
    back with its bytes (each PATCH streams its slice of the file)."""
    files = {"a.bin": os.urandom(3 * CHUNK + 7), "b.bin": os.urandom(CHUNK // 2)}
    (tmp_path / "b").mkdir()
    for name, data in files.items():
        (tmp_path / "b" / name).write_bytes(data)
    client = client_for(registry)
    client.upload_chunk = CHUNK
    pushed = push_bundle(client, "t", tmp_path / "b", {"manifest.json": b"{}"})
    for layer in parse_manifest(client.get_manifest(pushed.digest)):
        part = tmp_path / f"{layer.path}.part"
        client.download_blob(Descriptor(LAYER_MEDIA_TYPE, layer.digest, layer.size), part)
        expected = files.get(layer.path, b"{}")
        assert part.read_bytes() == expected, layer.path


def test_push_refuses_a_symlink(tmp_path: Path) -> None:
    """A symlink cannot be an OCI layer: PushRefused naming it, before any request."""
    (tmp_path / "b").mkdir()
    os.symlink("elsewhere", tmp_path / "b" / "link")
    client = RegistryClient("127.0.0.1:9", "m/f", insecure=frozenset({"127.0.0.1:9"}))
    with pytest.raises(PushRefused, match="link"):
        push_bundle(client, "t", tmp_path / "b")
    assert client.stats.requests == 0


def test_in_memory_overrides_replace_files(tmp_path: Path) -> None:
    """overrides (the settled manifest, the signature) replace the files of that name."""
    from service.oci.push import bundle_files, plan_layers

    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "manifest.json").write_bytes(b"old")
    (tmp_path / "b" / "READY").write_bytes(b"")
    layers, _ = plan_layers(
        bundle_files(tmp_path / "b"), {"manifest.json": b"new", "manifest.json.sig": b"sig"}
    )
    assert sorted((la.path, la.digest) for la in layers) == [
        ("manifest.json", "sha256:" + sha256(b"new")),
        ("manifest.json.sig", "sha256:" + sha256(b"sig")),
    ]


# -- what docker-registry cannot show: redirects and Bearer tokens --------------------------


class Scripted:
    """A tiny HTTP server on 127.0.0.1 answering from a function; records the requests.

    Used only for what the Debian docker-registry cannot do here: redirect to another host
    and the Bearer token flow (it needs a separate token server, not packaged).
    """

    def __init__(self, answer: Any) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                outer.requests.append((self.command, self.path, dict(self.headers.items())))
                status, headers, body = answer(self.command, self.path, dict(self.headers))
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = _handle  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = serve_http(Handler)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.httpd.server_port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# The check (http.client) and the client (requests) follow the same rules: each test
# runs against both.
HEADS = pytest.mark.parametrize("kind", [SourceCheck, RegistryClient], ids=["check", "client"])


@HEADS
def test_redirect_to_another_host_is_refused(kind: type[Any]) -> None:
    """A redirect to any other host:port is not followed; that server gets no request."""
    other = Scripted(lambda *_: (200, {}, b""))
    registry = Scripted(lambda *_: (307, {"Location": f"http://{other.host}/x"}, b""))
    try:
        client = kind(registry.host, "m/f", insecure=frozenset({registry.host}))
        with pytest.raises(RegistryError, match="refused"):
            client.head_manifest("t")
        assert other.requests == []
    finally:
        other.close()
        registry.close()


def token_realm(auth: str, realm: dict[str, str]) -> Any:
    """A registry answering 401 Bearer with ``realm["url"]`` until given ``tok-1``; as the
    realm, it gives ``tok-1`` for the right Basic credentials."""

    def answer(
        method: str, path: str, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        if path.startswith("/token"):
            ok = headers.get("Authorization") == auth and "scope=repository" in path
            return (200, {}, b'{"token": "tok-1"}') if ok else (401, {}, b"")
        if headers.get("Authorization") == "Bearer tok-1":
            return 200, {"Docker-Content-Digest": DIGEST}, b""
        return 401, {"WWW-Authenticate": f'Bearer realm="{realm["url"]}",service="reg"'}, b""

    return answer


@HEADS
def test_bearer_challenge_gets_a_token_with_basic_credentials(
    tmp_path: Path, kind: type[Any]
) -> None:
    """401 Bearer realm on the same registry: the token is fetched with the auth file's
    credentials and the request repeated with it."""
    realm: dict[str, str] = {}
    server = Scripted(token_realm("Basic " + b64("fleet:pw"), realm))
    realm["url"] = f"http://{server.host}/token"
    try:
        auth = tmp_path / "config.json"
        auth.write_bytes(auth_json({server.host: {"auth": b64("fleet:pw")}}))
        client = kind(server.host, "m/f", insecure=frozenset({server.host}), auth_file=auth)
        assert client.head_manifest("t").digest == DIGEST
        assert client.head_manifest("t").digest == DIGEST  # the token is kept
        assert [r[1].split("?")[0] for r in server.requests] == [
            "/v2/m/f/manifests/t",
            "/token",
            "/v2/m/f/manifests/t",
            "/v2/m/f/manifests/t",
        ]
    finally:
        server.close()


def realm_elsewhere(tmp_path: Path) -> tuple[Scripted, Scripted, Path]:
    """A token realm and a registry that names it, on two ports; the auth file for it."""
    realm: dict[str, str] = {}
    answer = token_realm("Basic " + b64("fleet:pw"), realm)
    tokens, server = Scripted(answer), Scripted(answer)
    realm["url"] = f"http://{tokens.host}/token"
    auth = tmp_path / "config.json"
    auth.write_bytes(auth_json({server.host: {"auth": b64("fleet:pw")}}))
    return tokens, server, auth


@HEADS
def test_token_realm_on_another_host_named_insecure_is_used(
    tmp_path: Path, kind: type[Any]
) -> None:
    """A realm on another host (as auth.docker.io is Docker Hub's) gets the registry's
    credentials, over plain HTTP only because SOURCE_INSECURE names it."""
    tokens, server, auth = realm_elsewhere(tmp_path)
    try:
        insecure = frozenset({server.host, tokens.host})
        client = kind(server.host, "m/f", insecure=insecure, auth_file=auth)
        assert client.head_manifest("t").digest == DIGEST
        assert [r[1].split("?")[0] for r in tokens.requests] == ["/token"]
    finally:
        tokens.close()
        server.close()


@HEADS
def test_plain_http_token_realm_elsewhere_is_refused(tmp_path: Path, kind: type[Any]) -> None:
    """A realm on another host over plain HTTP that SOURCE_INSECURE does not name: auth
    failure, and the credentials go nowhere."""
    tokens, server, auth = realm_elsewhere(tmp_path)
    try:
        client = kind(server.host, "m/f", insecure=frozenset({server.host}), auth_file=auth)
        with pytest.raises(RegistryError, match="SOURCE_INSECURE") as info:
            client.head_manifest("t")
        assert info.value.reason == "auth"
        assert tokens.requests == []
    finally:
        tokens.close()
        server.close()


@HEADS
@pytest.mark.parametrize(
    "body",
    [b"", b"{}", b'{"token": ""}', b'{"token": 7}', b'{"token": "a\r\nX-Evil: 1"}', b"[1]"],
)
def test_token_answer_without_a_usable_token_is_an_auth_failure(
    tmp_path: Path, kind: type[Any], body: bytes
) -> None:
    """A realm answering 200 with no usable token (none, empty, not a string, a header
    injection): reason auth, the request is not repeated."""
    realm: dict[str, str] = {}

    def answer(
        method: str, path: str, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        if path.startswith("/token"):
            return 200, {}, body
        return 401, {"WWW-Authenticate": f'Bearer realm="{realm["url"]}"'}, b""

    server = Scripted(answer)
    realm["url"] = f"http://{server.host}/token"
    try:
        client = kind(server.host, "m/f", insecure=frozenset({server.host}))
        with pytest.raises(RegistryError) as info:
            client.head_manifest("t")
        assert info.value.reason == "auth"
        assert [r[1].split("?")[0] for r in server.requests] == ["/v2/m/f/manifests/t", "/token"]
    finally:
        server.close()


def test_longer_blob_than_its_descriptor_is_refused(tmp_path: Path) -> None:
    """A blob that streams more bytes than its descriptor's size: digest_mismatch, the
    partial file removed."""
    from service.oci.protocol import Descriptor

    server = Scripted(lambda *_: (200, {}, b"x" * 5000))
    try:
        client = RegistryClient(server.host, "m/f", insecure=frozenset({server.host}))
        part = tmp_path / "blob.part"
        with pytest.raises(RegistryError) as info:
            client.download_blob(Descriptor("x", "sha256:" + sha256(b"x" * 10), 10), part)
        assert info.value.reason == "digest_mismatch" and not part.exists()
    finally:
        server.close()


def test_registry_ignoring_range_restarts_the_blob(tmp_path: Path) -> None:
    """A registry that answers 200 to a Range request: the partial file is rewritten from
    the start and the blob still verifies."""
    data = os.urandom(3000)
    server = Scripted(lambda *_: (200, {}, data))
    try:
        from service.oci.protocol import Descriptor

        client = RegistryClient(server.host, "m/f", insecure=frozenset({server.host}))
        part = tmp_path / "blob.part"
        part.write_bytes(b"garbage-prefix")
        client.download_blob(Descriptor("x", "sha256:" + sha256(data), len(data)), part)
        assert part.read_bytes() == data
        assert "Range" in server.requests[0][2]
    finally:
        server.close()


@pytest.mark.registry
def test_retag_points_stable_at_the_canary_digest(tmp_path: Path, registry: Registry) -> None:
    """retag canary -> stable: stable names the canary digest, no blob is uploaded."""
    from service.oci.push import retag

    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "m").write_bytes(b"x")
    pushed = push_bundle(client_for(registry), "canary", tmp_path / "b")
    mover = client_for(registry)
    assert retag(mover, "canary", "stable") == pushed.digest
    assert client_for(registry, "pull").head_manifest("stable").digest == pushed.digest
    assert not [p for p in mover.stats.paths if "/blobs/" in p]


# -- the client on the standard library: its connection and its imports --------------------


class KeptAlive:
    """An HTTP/1.1 registry on a fixed port serving one blob; ``stop`` also drops the
    connections it keeps (a registry restarting), ``start`` listens on the port again."""

    def __init__(self, blob: bytes, port: int = 0) -> None:
        self.blob = blob
        self.port = port
        self.requests: list[tuple[int, str]] = []  # (client port, request line)
        self.start()

    def start(self) -> None:
        outer = self
        self.connections: list[Any] = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                outer.connections.append(self.connection)
                outer.requests.append((self.client_address[1], f"GET {self.path}"))
                self.send_response(200)
                self.send_header("Content-Length", str(len(outer.blob)))
                self.send_header("Docker-Content-Digest", "sha256:" + sha256(outer.blob))
                self.end_headers()
                self.wfile.write(outer.blob)

            do_HEAD = do_GET  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_port
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        for conn in self.connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"


def test_refused_reconnect_of_a_kept_connection_is_retried_during_a_download(
    tmp_path: Path,
) -> None:
    """The registry restarts between the manifest and the blob: the kept connection it
    dropped is replaced, the refused connects are retried as urllib3's Retry(connect=2,
    backoff_factor=0.5) did (at once, then after 1 s), and the blob arrives whole."""
    from service.oci.protocol import Descriptor

    data = os.urandom(100_000)
    server = KeptAlive(data)
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            server.start()  # back up before the last connect attempt

    try:
        client = RegistryClient(server.host, "m/f", insecure=frozenset({server.host}))
        client.transport.sleep = sleep
        client.head_manifest("t")
        server.stop()
        part = tmp_path / "blob.part"
        descriptor = Descriptor("x", "sha256:" + sha256(data), len(data))
        assert client.download_blob(descriptor, part) == len(data)
        assert part.read_bytes() == data and sleeps == [0.0, 1.0]
        (head_port, _), (get_port, get) = server.requests
        assert head_port != get_port and get == f"GET /v2/m/f/blobs/{descriptor.digest}"
    finally:
        server.stop()


def test_registry_that_stays_down_fails_the_download_with_connection(tmp_path: Path) -> None:
    """Three refused connects (one and two retries) end the download: reason connection,
    naming the registry, nothing written."""
    from service.oci.protocol import Descriptor

    server = KeptAlive(b"x")
    server.stop()
    sleeps: list[float] = []
    client = RegistryClient(server.host, "m/f", insecure=frozenset({server.host}))
    client.transport.sleep = sleeps.append
    part = tmp_path / "blob.part"
    with pytest.raises(RegistryError, match=server.host) as info:
        client.download_blob(Descriptor("x", "sha256:" + sha256(b"x"), 1), part)
    assert info.value.reason == "connection" and sleeps == [0.0, 1.0]
    assert not part.exists()


WHOLE_PULL = r"""
import sys
from pathlib import Path
from prometheus_client import CollectorRegistry
from service.jobs.pull import PullJob
from service.layout import Layout
from service.oci.check import SourceCheck
from service.oci.client import RegistryClient
from service.oci.reference import parse_reference
from service.pull_metrics import PullMetrics

host, repo, root = sys.argv[1], sys.argv[2], Path(sys.argv[3])
insecure = frozenset({host})
job = PullJob(
    Layout(root, root / "staging", root / "current"),
    parse_reference(f"oci://{host}/{repo}:stable"),
    SourceCheck(host, repo, insecure=insecure),
    lambda: RegistryClient(host, repo, insecure=insecure),
    PullMetrics(CollectorRegistry()),
)
result = job.run()
print(result.outcome, (root / "staging" / "READY").exists(),
      "requests" in sys.modules, "urllib3" in sys.modules)
"""


@pytest.mark.registry
def test_a_whole_pull_imports_neither_requests_nor_urllib3(
    tmp_path: Path, registry: Registry
) -> None:
    """A PullJob run that checks, downloads and hands the bundle to staging, in a fresh
    process: requests and urllib3 are never imported (the idle RSS after a pull)."""
    import subprocess
    import sys

    from tests.support import ROOT

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.bin").write_bytes(os.urandom(64 * 1024))
    manifest = {
        "version": "v1",
        "files": {
            "model.bin": {"sha256": sha256((bundle / "model.bin").read_bytes()), "size": 64 * 1024}
        },
    }
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    push_bundle(client_for(registry), "stable", bundle)
    root = tmp_path / "models"
    (root / "staging").mkdir(parents=True)
    (root / "versions").mkdir()
    out = subprocess.run(
        [sys.executable, "-c", WHOLE_PULL, registry.host, "m/f", str(root)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["staged", "True", "False", "False"], out.stderr


def test_token_realm_named_insecure_in_any_case_may_be_plain_http() -> None:
    """SOURCE_INSECURE names hosts case-insensitively for the realm as for the registry;
    a plain-HTTP realm it does not name is refused as auth."""
    from service.oci.protocol import token_url

    params = {"realm": "http://TOKENS.example:5000/t", "service": "s"}
    url = token_url(
        "https://r.example", "r.example", "m/f", "pull", params, frozenset({"Tokens.Example:5000"})
    )
    assert url.startswith("http://TOKENS.example:5000/t?")
    assert "scope=repository%3Am%2Ff%3Apull" in url
    with pytest.raises(RegistryError) as info:
        token_url("https://r.example", "r.example", "m/f", "pull", params, frozenset())
    assert info.value.reason == "auth"
