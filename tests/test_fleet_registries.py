"""Registries as they run in production, with the real CLI and sidecar: HTTPS from a
private CA (REGISTRY_CA_FILE) and token auth whose realm is another server (as Docker
Hub's auth.docker.io or GitLab's /jwt/auth), on Debian's docker-registry."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from registry import Registry

from service.errors import ConfigError
from service.oci.check import SourceCheck
from service.oci.client import RegistryClient
from service.oci.protocol import RegistryError, load_ca_file
from tests.support import SidecarProcess, base_env, run_cli, sha256, wait_for

pytestmark = pytest.mark.registry
REPO = "models/forecaster"
USERS = {"fleet": "fleet-pw", "publisher": "publisher-pw"}
DEADLINE = 40.0  # SOURCE_POLL_SECONDS is at least 5 s, plus its jitter


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[Registry]:
    """docker-registry over HTTPS from a throwaway CA, token auth at a realm on another
    port (itself HTTPS from the same CA)."""
    reg = Registry(tmp_path / "secure-registry", users=USERS, tls=True, token_auth=True).start()
    yield reg
    reg.stop()


def bundle(tmp_path: Path, version: str) -> Path:
    src = tmp_path / f"bundle-{version}"
    src.mkdir()
    data = f"weights of {version}".encode()
    (src / "model.bin").write_bytes(data)
    listed = {"model.bin": {"sha256": sha256(data), "size": len(data)}}
    (src / "manifest.json").write_text(json.dumps({"version": version, "files": listed}))
    return src


def push_env(
    tmp_path: Path, reg: Registry, user: str = "publisher", **extra: str
) -> dict[str, str]:
    auth = reg.auth_file(tmp_path / f"{user}.json", user, USERS[user])
    assert reg.ca_file is not None
    return base_env(
        Path("/nonexistent"),
        REGISTRY_AUTH_FILE=str(auth),
        REGISTRY_CA_FILE=str(reg.ca_file),
    )


def push(tmp_path: Path, reg: Registry, version: str, **env: str) -> str:
    """``forecaster-sidecar push`` of a new bundle to the tag; its digest."""
    out = run_cli("push", str(bundle(tmp_path, version)), f"{reg.host}/{REPO}:stable", env=env)
    assert out.returncode == 0, out.stderr
    match = re.search(r"sha256:[0-9a-f]{64}", out.stdout)
    assert match is not None, out.stdout
    return match.group(0)


def follow(
    start_daemon: Callable[..., SidecarProcess], models: Path, reg: Registry, **extra: str
) -> SidecarProcess:
    """The real sidecar following the tag as the node user ``fleet``, ready."""
    auth = reg.auth_file(models.parent / "fleet.json", "fleet", USERS["fleet"])
    daemon = start_daemon(
        models,
        "--no-reload",
        SOURCE=f"oci://{reg.host}/{REPO}:stable",
        SOURCE_POLL_SECONDS="5",
        REGISTRY_AUTH_FILE=str(auth),
        **extra,
    )
    daemon.wait_ready()
    return daemon


def current(models: Path) -> str | None:
    link = models / "current"
    return os.readlink(link).rsplit("/", 1)[-1] if link.is_symlink() else None


def test_sidecar_pulls_over_https_with_a_token_from_another_server(
    tmp_path: Path,
    models: Path,
    secure: Registry,
    start_daemon: Callable[..., SidecarProcess],
) -> None:
    """push and the sidecar trust the private CA of REGISTRY_CA_FILE and get their tokens
    from the realm (pull,push for the publisher, pull for the node); v1 is promoted."""
    digest = push(tmp_path, secure, "v1", **push_env(tmp_path, secure))
    daemon = follow(start_daemon, models, secure, REGISTRY_CA_FILE=str(secure.ca_file))
    wait_for(lambda: current(models) == "v1", DEADLINE, "v1 promoted")
    daemon.wait_metric("model_sidecar_source_up_to_date", lambda v: v == 1, DEADLINE)
    assert daemon.metric("model_sidecar_source_digest_info", digest=digest) == 1
    assert secure.token_server is not None
    scopes = set(secure.token_server.requests)
    assert (f"repository:{REPO}:pull,push", "publisher") in scopes
    assert (f"repository:{REPO}:pull", "fleet") in scopes
    assert secure.token_server.refused == []


def test_sidecar_without_the_ca_counts_connection_failures(
    tmp_path: Path,
    models: Path,
    secure: Registry,
    start_daemon: Callable[..., SidecarProcess],
) -> None:
    """Without REGISTRY_CA_FILE the private CA is not trusted: every check fails with
    reason connection, the log says why and names the setting, nothing is staged."""
    push(tmp_path, secure, "v1", **push_env(tmp_path, secure))
    daemon = follow(start_daemon, models, secure)
    daemon.wait_metric(
        "model_sidecar_pull_failures_total", lambda v: (v or 0) >= 2, DEADLINE, reason="connection"
    )
    assert "REGISTRY_CA_FILE" in daemon.log() and "certificate" in daemon.log()
    assert os.listdir(models / "staging") == [] and current(models) is None
    assert secure.token_server is not None and secure.token_server.requests[-1][1] == "publisher"


def test_push_without_the_ca_fails_naming_the_setting(tmp_path: Path, secure: Registry) -> None:
    """push to a registry whose CA is not trusted: exit 1, one line naming
    REGISTRY_CA_FILE, nothing uploaded."""
    env = push_env(tmp_path, secure)
    del env["REGISTRY_CA_FILE"]
    out = run_cli("push", str(bundle(tmp_path, "v1")), f"{secure.host}/{REPO}:stable", env=env)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "REGISTRY_CA_FILE" in lines[0], out.stderr
    assert secure.requests("PUT", "/blobs/uploads/") == 0


def test_wrong_password_is_an_auth_failure_at_the_realm(tmp_path: Path, secure: Registry) -> None:
    """A wrong password: the realm refuses a token, the check fails with reason auth and
    the password is in no message."""
    auth = tmp_path / "wrong.json"
    secure.auth_file(auth, "fleet", "not-the-password")
    check = SourceCheck(secure.host, REPO, auth_file=auth, ca_file=secure.ca_file)
    with pytest.raises(RegistryError) as info:
        check.head_manifest("stable")
    assert info.value.reason == "auth" and "not-the-password" not in str(info.value)
    assert secure.token_server is not None and secure.token_server.refused == ["fleet"]


def test_check_and_client_trust_the_same_ca(tmp_path: Path, secure: Registry) -> None:
    """The check (http.client) and the client (requests) both verify with
    REGISTRY_CA_FILE, and both refuse the registry without it."""
    auth = secure.auth_file(tmp_path / "fleet.json", "fleet", USERS["fleet"])
    push(tmp_path, secure, "v1", **push_env(tmp_path, secure))
    for kind in (SourceCheck, RegistryClient):
        trusted = kind(secure.host, REPO, auth_file=auth, ca_file=secure.ca_file)
        assert trusted.head_manifest("stable").digest.startswith("sha256:")
        with pytest.raises(RegistryError, match="REGISTRY_CA_FILE") as info:
            kind(secure.host, REPO, auth_file=auth).head_manifest("stable")
        assert info.value.reason == "connection"


@pytest.mark.parametrize("command", ["run", "push"])
def test_unusable_ca_file_exits_2_naming_it(tmp_path: Path, models: Path, command: str) -> None:
    """REGISTRY_CA_FILE that is not a PEM certificate: exit 2 at start, one line naming
    the setting, for the daemon and for push."""
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    env = base_env(
        models,
        SOURCE="oci://127.0.0.1:9/models/forecaster:stable",
        REGISTRY_CA_FILE=str(ca),
        METRICS_PORT="0",
    )
    args = ["--no-reload"] if command == "run" else ["push", str(bundle(tmp_path, "v1"))]
    if command == "push":
        args.append(f"127.0.0.1:9/{REPO}:stable")
    out = run_cli(*args, env=env, timeout=30)
    assert out.returncode == 2, out.stderr
    assert f"REGISTRY_CA_FILE {ca}" in out.stderr


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=60)
@given(
    st.one_of(
        st.binary(max_size=2048),
        st.text(max_size=512).map(
            lambda t: f"-----BEGIN CERTIFICATE-----\n{t}\n-----END CERTIFICATE-----\n".encode()
        ),
    )
)
def test_any_damaged_ca_file_is_a_config_error(tmp_path: Path, data: bytes) -> None:
    """Whatever bytes REGISTRY_CA_FILE holds, an unusable file is a ConfigError naming
    it (exit 2), never another exception."""
    ca = tmp_path / "ca.pem"
    ca.write_bytes(data)
    with pytest.raises(ConfigError, match="REGISTRY_CA_FILE"):
        load_ca_file(ca)


@pytest.mark.parametrize("name", ["/dev/zero", "directory", "missing"])
def test_ca_file_that_is_no_file_is_a_config_error(tmp_path: Path, name: str) -> None:
    """REGISTRY_CA_FILE naming a file without end, a directory or nothing: a ConfigError
    naming it, at once (the start never hangs reading it)."""
    path = {"directory": tmp_path, "missing": tmp_path / "none.pem"}.get(name, Path(name))
    with pytest.raises(ConfigError, match=f"REGISTRY_CA_FILE {path}"):
        load_ca_file(path)
