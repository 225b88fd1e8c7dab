"""`forecaster-sidecar push` against a real docker-registry on 127.0.0.1 (the real CLI
process): layers, reuse, signatures, credentials, and its errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from registry import Registry

from service import signing
from service.oci.artifact import parse_manifest as parse_oci
from service.oci.client import RegistryClient
from tests.support import Keygen, base_env, run_cli, sha256

pytestmark = pytest.mark.registry
REPO = "models/forecaster"


def bundle(path: Path, files: dict[str, bytes], version: str = "v1", manifest: bool = True) -> Path:
    for name, data in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    if manifest:
        listed = {n: {"sha256": sha256(d), "size": len(d)} for n, d in files.items()}
        (path / "manifest.json").write_text(json.dumps({"version": version, "files": listed}))
    return path


def push(
    reg: Registry, src: Path, *args: str, tag: str = "stable", **env: str
) -> tuple[int, str, str]:
    env = {"REGISTRY_AUTH_FILE": str(src.parent / "no-auth.json"), **env}
    environment = base_env(Path("/nonexistent"), SOURCE_INSECURE=reg.host, **env)
    out = run_cli("push", str(src), f"{reg.host}/{REPO}:{tag}", *args, env=environment)
    return out.returncode, out.stdout, out.stderr


def layers(reg: Registry, tag: str = "stable") -> dict[str, bytes]:
    client = RegistryClient(reg.host, REPO, insecure=frozenset({reg.host}))
    digest = client.head_manifest(tag).digest
    found = {}
    for layer in parse_oci(client.get_manifest(digest)):
        found[layer.path] = reg.blob_path(layer.digest).read_bytes()
    return found


def test_push_uploads_one_layer_per_file_then_nothing(tmp_path: Path, registry: Registry) -> None:
    """A bundle is pushed as one layer per file (manifest included); again: 0 uploaded."""
    src = bundle(tmp_path / "b", {"model.bin": os.urandom(5000), "conf/a.json": b"{}"})
    code, out, err = push(registry, src)
    assert code == 0, err
    assert "sha256:" in out and "3 layers, 3 uploaded, 0 already" in out
    assert set(layers(registry)) == {"model.bin", "conf/a.json", "manifest.json"}
    assert layers(registry)["manifest.json"] == (src / "manifest.json").read_bytes()
    code, out, err = push(registry, src)
    assert code == 0 and "0 uploaded, 3 already in the registry" in out, out + err


def test_push_without_manifest_generates_one(tmp_path: Path, registry: Registry) -> None:
    """No manifest in the bundle: one listing every file with its sha256 is pushed."""
    src = bundle(tmp_path / "b", {"m.bin": b"abc"}, manifest=False)
    assert push(registry, src)[0] == 0
    pushed = json.loads(layers(registry)["manifest.json"])
    assert pushed["files"] == {"m.bin": {"sha256": sha256(b"abc"), "size": 3}}
    assert not (src / "manifest.json").exists()  # nothing written into the bundle


def test_push_sign_adds_a_verifying_signature(
    tmp_path: Path, registry: Registry, keygen: Keygen
) -> None:
    """push --sign: manifest.json.sig is a layer and verifies over the pushed manifest."""
    private, public = keygen("publisher")
    src = bundle(tmp_path / "b", {"m.bin": b"abc"})
    code, _out, err = push(registry, src, "--sign", str(private))
    assert code == 0, err
    pushed = layers(registry)
    keys = signing.load_trusted_keys(public)
    signature = signing.decode_signature(pushed["manifest.json.sig"])
    assert signing.verifies(pushed["manifest.json"], signature, keys.keys)


def test_push_refuses_a_checksum_the_manifest_contradicts(
    tmp_path: Path, registry: Registry
) -> None:
    """A file that does not match its listed sha256: exit 1 naming it, nothing pushed."""
    src = bundle(tmp_path / "b", {"m.bin": b"abc"})
    (src / "m.bin").write_bytes(b"abd")
    code, _out, err = push(registry, src)
    assert code == 1 and "m.bin" in err
    assert not list(registry.storage.rglob("_manifests"))


def test_push_refuses_a_symlink(tmp_path: Path, registry: Registry) -> None:
    """A symlink in the bundle cannot be a layer: exit 1 naming it."""
    src = bundle(tmp_path / "b", {"m.bin": b"abc"}, manifest=False)
    os.symlink("m.bin", src / "alias")
    code, _out, err = push(registry, src)
    assert code == 1 and "alias" in err


@pytest.mark.parametrize(
    "target", ["nohost", "127.0.0.1:5000/repo", "h:1/r@sha256:" + "a" * 64, "h:1/Bad Repo:t"]
)
def test_push_bad_target_is_a_usage_error(tmp_path: Path, target: str) -> None:
    """A target that is not REGISTRY/REPO:TAG: exit 2 naming it."""
    src = bundle(tmp_path / "b", {"m.bin": b"abc"})
    out = run_cli("push", str(src), target, env=base_env(Path("/nonexistent")))
    assert out.returncode == 2 and "REGISTRY/REPO:TAG" in out.stderr


def test_push_bad_signing_key_exits_2(tmp_path: Path, registry: Registry) -> None:
    """--sign with a file that is not a private key: exit 2 naming the file."""
    key = tmp_path / "key.pem"
    key.write_text("nope")
    code, _out, err = push(registry, bundle(tmp_path / "b", {"m": b"1"}), "--sign", str(key))
    assert code == 2 and str(key) in err


def test_push_to_a_dead_registry_is_one_line_exit_1(tmp_path: Path, registry: Registry) -> None:
    """The registry is gone: exit 1, one line naming the cause, no traceback."""
    registry.kill()
    code, _out, err = push(registry, bundle(tmp_path / "b", {"m": b"1"}))
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_push_uses_the_auth_file_and_never_shows_the_password(tmp_path: Path) -> None:
    """Basic auth from REGISTRY_AUTH_FILE works; a wrong password is exit 1 without it."""
    reg = Registry(tmp_path / "registry", users={"ci": "s3cret-pw"}).start()
    try:
        src = bundle(tmp_path / "b", {"m": b"1"})
        good = reg.auth_file(tmp_path / "good.json", "ci", "s3cret-pw")
        assert push(reg, src, REGISTRY_AUTH_FILE=str(good))[0] == 0
        bad = reg.auth_file(tmp_path / "bad.json", "ci", "wrong-pw-123")
        code, out, err = push(reg, src, REGISTRY_AUTH_FILE=str(bad))
        assert code == 1 and "wrong-pw-123" not in out + err
        assert "auth" in err.lower() or "401" in err
    finally:
        reg.stop()


def test_push_help_names_its_arguments_and_exit_codes() -> None:
    """`help push` equals `push --help`: arguments, --sign, the auth file, exit codes;
    no volume options (push never touches a volume)."""
    env = base_env(Path("/nonexistent"))
    text = run_cli("push", "--help", env=env).stdout
    assert run_cli("help", "push", env=env).stdout == text
    for word in ("BUNDLE_DIR", "REGISTRY/REPO:TAG", "--sign", "REGISTRY_AUTH_FILE", "130"):
        assert word in text, word
    assert "--models-root" not in text


@settings(max_examples=300)
@given(st.text(max_size=120) | st.from_regex(r"[a-z0-9.:]{1,20}/[a-zA-Z0-9/_.:@-]{0,60}"))
def test_any_target_is_parsed_or_refused_by_name(text: str) -> None:
    """Whatever the target text, parse_target returns a tagged target or a ConfigError
    naming REGISTRY/REPO:TAG (never another exception, never a digest target)."""
    from service.errors import ConfigError
    from service.publish import parse_target

    try:
        target = parse_target(text)
    except ConfigError as exc:
        assert "REGISTRY/REPO:TAG" in str(exc)
    else:
        assert target.tag and "@" not in text
