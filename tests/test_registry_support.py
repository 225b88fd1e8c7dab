"""The test registry's TLS and token auth work against the real docker-registry."""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import pytest

from tests.registry import Registry

pytestmark = pytest.mark.registry

USERS = {"ci": "s3cret-pw"}
REPO = "models/forecaster"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EMPTY = b"{}"
EMPTY_DIGEST = "sha256:" + hashlib.sha256(EMPTY).hexdigest()


def call(
    method: str,
    url: str,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
    context: ssl.SSLContext | None = None,
) -> tuple[int, Message, bytes]:
    """(status, headers, body) of one request; HTTP errors are answers, not exceptions."""
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def token_url(registry: Registry, scope: str) -> str:
    assert registry.token_server is not None
    query = urllib.parse.urlencode({"service": registry.token_server.service, "scope": scope})
    return f"{registry.token_server.realm}?{query}"


def bearer(registry: Registry, actions: str) -> dict[str, str]:
    """Authorization headers with a token for ``actions`` on REPO, from the realm."""
    url = token_url(registry, f"repository:{REPO}:{actions}")
    context = registry.client_context() if registry.ca_file else None
    status, _, body = call("GET", url, basic("ci", USERS["ci"]), context=context)
    assert status == 200, body
    return {"Authorization": "Bearer " + json.loads(body)["token"]}


def push_manifest(registry: Registry, auth: dict[str, str]) -> None:
    """The empty blob by POST and PUT, then a tiny OCI manifest whose config it is."""
    status, headers, body = call("POST", f"{registry.url}/v2/{REPO}/blobs/uploads/", auth, b"")
    assert status == 202, body
    location = urllib.parse.urljoin(registry.url, headers["Location"])
    separator = "&" if "?" in location else "?"
    upload = f"{location}{separator}digest={EMPTY_DIGEST}"
    # Never urllib's default form type: distribution's FormValue("digest") would eat the body.
    octets = {**auth, "Content-Type": "application/octet-stream"}
    status, _, body = call("PUT", upload, octets, EMPTY)
    assert status == 201, body
    empty = {"mediaType": "application/vnd.oci.empty.v1+json", "digest": EMPTY_DIGEST, "size": 2}
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": empty, "layers": []}
    headers_out = {**auth, "Content-Type": OCI_MANIFEST}
    url = f"{registry.url}/v2/{REPO}/manifests/v1"
    status, _, body = call("PUT", url, headers_out, json.dumps(manifest).encode())
    assert status == 201, body


@pytest.fixture
def token_registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry(tmp_path / "registry", users=USERS, token_auth=True).start()
    yield reg
    reg.stop()


@pytest.fixture
def tls_registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry(tmp_path / "registry", tls=True).start()
    yield reg
    reg.stop()


def test_token_registry_challenges_with_a_bearer_realm_on_another_port(
    token_registry: Registry,
) -> None:
    """/v2/ without a token is 401 with a Bearer challenge naming the realm and service."""
    assert token_registry.token_server is not None
    status, headers, _ = call("GET", f"{token_registry.url}/v2/")
    assert status == 401
    assert headers["Www-Authenticate"] == (
        f'Bearer realm="{token_registry.token_server.realm}",'
        f'service="{token_registry.token_server.service}"'
    )
    assert token_registry.token_server.port != token_registry.port


def test_token_from_the_realm_pushes_and_heads_an_oci_manifest(token_registry: Registry) -> None:
    """A token for pull,push lets a blob and an OCI manifest be pushed and HEAD-ed back."""
    auth = bearer(token_registry, "pull,push")
    push_manifest(token_registry, auth)
    url = f"{token_registry.url}/v2/{REPO}/manifests/v1"
    status, headers, _ = call("HEAD", url, {**auth, "Accept": OCI_MANIFEST})
    assert (status, headers["Content-Type"]) == (200, OCI_MANIFEST)


def test_token_server_records_the_tokens_it_issued(token_registry: Registry) -> None:
    """Each token issued is recorded as (scope, user)."""
    assert token_registry.token_server is not None
    bearer(token_registry, "pull")
    assert token_registry.token_server.requests == [(f"repository:{REPO}:pull", "ci")]


def test_a_pull_token_cannot_push(token_registry: Registry) -> None:
    """The registry checks the token's access claim: pull alone cannot start an upload."""
    auth = bearer(token_registry, "pull")
    status, _, _ = call("POST", f"{token_registry.url}/v2/{REPO}/blobs/uploads/", auth, b"")
    assert status == 401


def test_a_wrong_password_gets_no_token(token_registry: Registry) -> None:
    """Wrong Basic credentials get 401 with a Basic challenge and no token."""
    assert token_registry.token_server is not None
    url = token_url(token_registry, f"repository:{REPO}:pull")
    status, headers, body = call("GET", url, basic("ci", "wrong"))
    assert (status, body) == (401, b"")
    assert headers["WWW-Authenticate"].startswith("Basic ")
    assert token_registry.token_server.requests == []
    assert token_registry.token_server.refused == ["ci"]


def test_anonymous_gets_no_token(token_registry: Registry) -> None:
    """A token request without credentials is refused too."""
    status, _, _ = call("GET", token_url(token_registry, f"repository:{REPO}:pull"))
    assert status == 401


def test_tls_registry_answers_a_client_that_trusts_its_ca(tls_registry: Registry) -> None:
    """Over https with the registry's CA, /v2/ answers 200."""
    assert tls_registry.scheme == "https"
    context = ssl.create_default_context(cafile=str(tls_registry.ca_file))
    status, _, _ = call("GET", f"{tls_registry.url}/v2/", context=context)
    assert status == 200


def test_tls_registry_is_refused_by_a_client_without_its_ca(tls_registry: Registry) -> None:
    """The CA is private: the system trust store does not verify the registry."""
    with pytest.raises(urllib.error.URLError) as raised:
        urllib.request.urlopen(f"{tls_registry.url}/v2/", timeout=10)
    assert isinstance(raised.value.reason, ssl.SSLCertVerificationError)


def test_tls_and_token_auth_serve_the_realm_over_https_too(tmp_path: Path) -> None:
    """With both, the realm is https under the same CA and its token pushes."""
    reg = Registry(tmp_path / "registry", users=USERS, tls=True, token_auth=True).start()
    try:
        assert reg.token_server is not None
        assert reg.token_server.realm.startswith("https://127.0.0.1:")
        context = reg.client_context()
        auth = bearer(reg, "pull")
        status, _, _ = call("GET", f"{reg.url}/v2/{REPO}/tags/list", auth, context=context)
        assert status == 404  # past auth: the repository just does not exist
    finally:
        reg.stop()


def test_a_restarted_token_registry_keeps_its_realm(token_registry: Registry) -> None:
    """stop() then start() serves the same realm and registry address again."""
    assert token_registry.token_server is not None
    realm, host = token_registry.token_server.realm, token_registry.host
    token_registry.stop()
    token_registry.start()
    assert (token_registry.token_server.realm, token_registry.host) == (realm, host)
    auth = bearer(token_registry, "pull")
    status, _, _ = call("GET", f"{token_registry.url}/v2/{REPO}/tags/list", auth)
    assert status == 404  # past auth: the repository just does not exist
