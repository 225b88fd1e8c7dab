"""service.signing: Ed25519 keys made by openssl, signatures, coverage of the bundle."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service import signing
from service.bundle import Manifest, parse_manifest, read_signed_manifest
from service.errors import BundleRejected, TransientError
from service.manifest_reader import DEFAULT_LIMITS
from tests.support import ROOT, Keygen, openssl, sha256


def write_bundle(
    root: Path,
    files: dict[str, bytes],
    extra: dict[str, bytes] | None = None,
) -> bytes:
    """Files listed in the manifest, plus extra files that are not; the manifest bytes."""
    root.mkdir(parents=True, exist_ok=True)
    for name, data in {**files, **(extra or {})}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    manifest = json.dumps(
        {
            "version": "v1",
            "files": {n: {"sha256": sha256(d), "size": len(d)} for n, d in files.items()},
        }
    ).encode()
    (root / "manifest.json").write_bytes(manifest)
    return manifest


def sign_bundle(root: Path, private: Path) -> None:
    data = (root / "manifest.json").read_bytes()
    (root / "manifest.json.sig").write_bytes(signing.sign_manifest(data, private))


def verify_bundle(root: Path, keys: signing.TrustedKeys) -> Manifest:
    """What the promotion does with a signed bundle: the manifest read once (signature
    and parse), then every file checked to be listed."""
    manifest = read_signed_manifest(root, "manifest.json", keys)
    signing.check_coverage(root, "manifest.json", manifest.files)
    return manifest


def reason_of(root: Path, keys: signing.TrustedKeys) -> str:
    with pytest.raises(BundleRejected) as info:
        verify_bundle(root, keys)
    return info.value.reason


def test_signed_bundle_verifies_and_returns_the_manifest_bytes(
    tmp_path: Path, keygen: Keygen
) -> None:
    """A bundle signed with an openssl-made key verifies; the manifest bytes come back."""
    private, public = keygen("a")
    manifest = write_bundle(tmp_path / "b", {"model.onnx": b"weights", "sub/x.txt": b"x"})
    sign_bundle(tmp_path / "b", private)
    keys = signing.load_trusted_keys(public)
    assert verify_bundle(tmp_path / "b", keys) == parse_manifest(manifest)


def test_openssl_signature_verifies(tmp_path: Path, keygen: Keygen) -> None:
    """A signature made by `openssl pkeyutl -sign -rawin`, base64 with line breaks, verifies."""
    private, public = keygen("a")
    manifest = write_bundle(tmp_path / "b", {"model.onnx": b"weights"})
    raw = openssl(
        "pkeyutl",
        "-sign",
        "-rawin",
        "-inkey",
        str(private),
        "-in",
        str(tmp_path / "b" / "manifest.json"),
    )
    text = base64.encodebytes(raw)  # 76-column lines
    (tmp_path / "b" / "manifest.json.sig").write_bytes(b"  " + text.replace(b"\n", b"\r\n"))
    keys = signing.load_trusted_keys(public)
    assert verify_bundle(tmp_path / "b", keys) == parse_manifest(manifest)


def test_our_signature_verifies_with_openssl(tmp_path: Path, keygen: Keygen) -> None:
    """openssl pkeyutl -verify accepts the signature sign_manifest makes."""
    private, public = keygen("a")
    data = b'{"files": {}}'
    (tmp_path / "m").write_bytes(data)
    (tmp_path / "sig").write_bytes(base64.b64decode(signing.sign_manifest(data, private)))
    out = openssl(
        "pkeyutl",
        "-verify",
        "-rawin",
        "-pubin",
        "-inkey",
        str(public),
        "-in",
        str(tmp_path / "m"),
        "-sigfile",
        str(tmp_path / "sig"),
    )
    assert b"Signature Verified Successfully" in out


def test_any_key_of_several_verifies(tmp_path: Path, keygen: Keygen) -> None:
    """A file holding several public keys (rotation) accepts a signature by any of them."""
    (_, pub_a), (priv_b, pub_b) = keygen("a"), keygen("b")
    both = tmp_path / "trusted.pem"
    both.write_bytes(b"# ring keys\n" + pub_a.read_bytes() + b"\n" + pub_b.read_bytes())
    write_bundle(tmp_path / "b", {"f": b"1"})
    sign_bundle(tmp_path / "b", priv_b)
    keys = signing.load_trusted_keys(both)
    assert len(keys.keys) == 2
    verify_bundle(tmp_path / "b", keys)


def test_missing_signature_is_signature_missing(tmp_path: Path, keygen: Keygen) -> None:
    """No manifest.json.sig: signature_missing."""
    write_bundle(tmp_path / "b", {"f": b"1"})
    assert (
        reason_of(tmp_path / "b", signing.load_trusted_keys(keygen("a")[1])) == "signature_missing"
    )


def test_untrusted_key_is_signature_invalid(tmp_path: Path, keygen: Keygen) -> None:
    """A signature by a key that is not trusted: signature_invalid."""
    write_bundle(tmp_path / "b", {"f": b"1"})
    sign_bundle(tmp_path / "b", keygen("b")[0])
    assert (
        reason_of(tmp_path / "b", signing.load_trusted_keys(keygen("a")[1])) == "signature_invalid"
    )


def test_manifest_changed_after_signing_is_signature_invalid(
    tmp_path: Path, keygen: Keygen
) -> None:
    """One byte of the manifest changed after signing: signature_invalid."""
    private, public = keygen("a")
    write_bundle(tmp_path / "b", {"f": b"1"})
    sign_bundle(tmp_path / "b", private)
    (tmp_path / "b" / "manifest.json").write_bytes(
        (tmp_path / "b" / "manifest.json").read_bytes() + b" "
    )
    assert reason_of(tmp_path / "b", signing.load_trusted_keys(public)) == "signature_invalid"


def test_unlisted_file_is_signature_invalid_and_named(tmp_path: Path, keygen: Keygen) -> None:
    """A regular file the signed manifest does not list: signature_invalid naming it."""
    private, public = keygen("a")
    write_bundle(tmp_path / "b", {"model.onnx": b"w"}, extra={"deep/er/evil.py": b"x"})
    sign_bundle(tmp_path / "b", private)
    with pytest.raises(BundleRejected) as info:
        verify_bundle(tmp_path / "b", signing.load_trusted_keys(public))
    assert info.value.reason == "signature_invalid"
    assert "deep/er/evil.py" in info.value.detail


def test_signature_through_symlink_is_signature_invalid(tmp_path: Path, keygen: Keygen) -> None:
    """A .sig that is a symlink is not followed: signature_invalid."""
    private, public = keygen("a")
    write_bundle(tmp_path / "b", {"f": b"1"})
    sign_bundle(tmp_path / "b", private)
    os.rename(tmp_path / "b" / "manifest.json.sig", tmp_path / "elsewhere.sig")
    os.symlink(tmp_path / "elsewhere.sig", tmp_path / "b" / "manifest.json.sig")
    assert reason_of(tmp_path / "b", signing.load_trusted_keys(public)) == "signature_invalid"


def test_signature_without_manifest_is_manifest_missing(tmp_path: Path, keygen: Keygen) -> None:
    """A signature with no manifest to cover: manifest_missing."""
    private, public = keygen("a")
    write_bundle(tmp_path / "b", {"f": b"1"})
    sign_bundle(tmp_path / "b", private)
    (tmp_path / "b" / "manifest.json").unlink()
    assert reason_of(tmp_path / "b", signing.load_trusted_keys(public)) == "manifest_missing"


def test_manifest_over_32_mib_is_refused_before_verifying(tmp_path: Path, keygen: Keygen) -> None:
    """A manifest over 32 MiB: manifest_invalid, and no more than the cap is read."""
    private, public = keygen("a")
    write_bundle(tmp_path / "b", {"f": b"1"})
    sign_bundle(tmp_path / "b", private)
    with (tmp_path / "b" / "manifest.json").open("ab") as fh:
        fh.truncate(DEFAULT_LIMITS.max_bytes + 1)
    assert reason_of(tmp_path / "b", signing.load_trusted_keys(public)) == "manifest_invalid"


def test_private_key_in_trusted_file_is_refused(tmp_path: Path, keygen: Keygen) -> None:
    """A private key in TRUSTED_KEYS_FILE: KeyFileError naming the file, key not echoed."""
    private, _ = keygen("a")
    with pytest.raises(signing.KeyFileError) as info:
        signing.load_trusted_keys(private)
    assert str(private) in str(info.value)
    assert "PRIVATE KEY" in str(info.value)
    assert "\n" not in str(info.value)
    assert private.read_text().splitlines()[1] not in str(info.value)


def test_missing_trusted_file_names_it(tmp_path: Path) -> None:
    """A missing TRUSTED_KEYS_FILE: KeyFileError naming the file."""
    with pytest.raises(signing.KeyFileError, match=str(tmp_path / "nope.pem")):
        signing.load_trusted_keys(tmp_path / "nope.pem")


def test_unreadable_keys_at_validation_are_transient(tmp_path: Path) -> None:
    """Re-reading the keys before a validation: a failure is io_error, not a rejection."""
    with pytest.raises(TransientError) as info:
        signing.reload_trusted_keys(tmp_path / "nope.pem")
    assert info.value.reason == "io_error"


def test_public_key_is_not_a_signing_key(tmp_path: Path, keygen: Keygen) -> None:
    """sign_manifest with a public key file: KeyFileError naming the file."""
    _, public = keygen("a")
    with pytest.raises(signing.KeyFileError, match=str(public)):
        signing.sign_manifest(b"{}", public)


def test_encrypted_private_key_is_refused(tmp_path: Path, keygen: Keygen) -> None:
    """An encrypted PKCS#8 key: KeyFileError (keys are mounted unencrypted from a Secret)."""
    private, _ = keygen("a")
    encrypted = tmp_path / "enc.pem"
    openssl(
        "pkcs8", "-topk8", "-in", str(private), "-out", str(encrypted), "-passout", "pass:secret"
    )
    with pytest.raises(signing.KeyFileError, match="unencrypted"):
        signing.sign_manifest(b"{}", encrypted)


def test_crypto_library_not_imported_without_signatures() -> None:
    """Importing service.signing (and the service package) does not load PyNaCl."""
    code = "import sys, service.signing, service.oci; print('nacl' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


# -- hostile input, generated --------------------------------------------------------------


@pytest.fixture(scope="module")
def signed(
    tmp_path_factory: pytest.TempPathFactory,
    keygen: Keygen,
) -> tuple[Path, signing.TrustedKeys, bytes]:
    root = tmp_path_factory.mktemp("signed") / "b"
    private, public = keygen("a")
    write_bundle(root, {"model.onnx": b"weights"})
    sign_bundle(root, private)
    return root, signing.load_trusted_keys(public), (root / "manifest.json.sig").read_bytes()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_any_other_signature_text_is_rejected(
    signed: tuple[Path, signing.TrustedKeys, bytes], text: bytes
) -> None:
    """Arbitrary .sig content: verifies only if it decodes to the real signature, else
    signature_invalid; never another exception."""
    root, keys, good = signed
    (root / "manifest.json.sig").write_bytes(text)
    try:
        verify_bundle(root, keys)
        assert base64.b64decode(b"".join(text.split())) == base64.b64decode(good)
    except BundleRejected as exc:
        assert exc.reason == "signature_invalid"
    finally:
        (root / "manifest.json.sig").write_bytes(good)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 63), st.integers(1, 255))
def test_flipped_signature_bits_are_rejected(
    signed: tuple[Path, signing.TrustedKeys, bytes], index: int, mask: int
) -> None:
    """Any signature with bits flipped: signature_invalid."""
    root, keys, good = signed
    raw = bytearray(base64.b64decode(good))
    raw[index] ^= mask
    (root / "manifest.json.sig").write_bytes(base64.b64encode(bytes(raw)))
    try:
        assert reason_of(root, keys) == "signature_invalid"
    finally:
        (root / "manifest.json.sig").write_bytes(good)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([" ", "\n", "\t", "\r\n"]), max_size=120))
def test_whitespace_in_signature_is_ignored(
    signed: tuple[Path, signing.TrustedKeys, bytes], spaces: list[str]
) -> None:
    """Whitespace and line breaks anywhere in the base64 text do not matter."""
    root, keys, good = signed
    chars = list(good.strip().decode())
    for i, space in enumerate(spaces):
        chars.insert((i * 7) % (len(chars) + 1), space)
    (root / "manifest.json.sig").write_text("".join(chars))
    try:
        verify_bundle(root, keys)
    finally:
        (root / "manifest.json.sig").write_bytes(good)


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=300)
    | st.builds(
        lambda body, label: f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n".encode(),
        st.text(
            alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\n",
            max_size=120,
        ),
        st.sampled_from(["PUBLIC KEY", "PRIVATE KEY", "CERTIFICATE"]),
    )
)
def test_mangled_key_files_are_a_clean_error(
    tmp_path_factory: pytest.TempPathFactory, text: bytes
) -> None:
    """Arbitrary key file content: keys of 32 bytes or a one-line KeyFileError naming it."""
    path = tmp_path_factory.getbasetemp() / "mangled.pem"
    path.write_bytes(text)
    try:
        keys = signing.load_trusted_keys(path)
    except signing.KeyFileError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
    else:
        assert keys.keys and all(len(k) == 32 for k in keys.keys)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 43), st.integers(1, 255))
def test_damaged_public_key_never_verifies(
    signed: tuple[Path, signing.TrustedKeys, bytes],
    tmp_path_factory: pytest.TempPathFactory,
    index: int,
    mask: int,
) -> None:
    """A trusted key with any DER byte damaged: refused at load or verifies nothing."""
    root, keys, _ = signed
    der = bytearray(signing.SPKI_PREFIX + keys.keys[0])
    der[index] ^= mask
    path = tmp_path_factory.getbasetemp() / "damaged.pem"
    body = base64.b64encode(bytes(der)).decode()
    path.write_text(f"-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n")
    try:
        damaged = signing.load_trusted_keys(path)
    except signing.KeyFileError:
        return
    assert reason_of(root, damaged) == "signature_invalid"


@settings(max_examples=300, deadline=None)
@given(
    st.binary(min_size=32, max_size=32),
    st.binary(max_size=300),
    st.integers(-1, 63),
    st.integers(1, 255),
)
def test_verification_agrees_with_libsodium(
    seed: bytes, message: bytes, index: int, mask: int
) -> None:
    """Our streaming verification accepts exactly what PyNaCl's verify accepts, for good
    signatures and for signatures with a byte damaged (index -1: untouched)."""
    from nacl.exceptions import BadSignatureError
    from nacl.signing import SigningKey

    key = SigningKey(seed)
    signature = bytearray(key.sign(message).signature)
    if index >= 0:
        signature[index] ^= mask
    try:
        key.verify_key.verify(message, bytes(signature))
        expected = True
    except BadSignatureError:
        expected = False
    assert signing.verifies(message, bytes(signature), (bytes(key.verify_key),)) is expected


def test_small_order_key_is_refused() -> None:
    """The identity point as a key with R = identity, S = 0 (valid for any message under
    a lax verifier) verifies nothing."""
    identity = bytes([1]) + bytes(31)
    assert not signing.verifies(b"anything", identity + bytes(32), (identity,))


def test_non_canonical_s_is_refused() -> None:
    """S + L (the same scalar, not canonical) does not verify: no malleable signatures."""
    from nacl.signing import SigningKey

    key = SigningKey(bytes(range(32)))
    signature = key.sign(b"m").signature
    s = int.from_bytes(signature[32:], "little") + signing.ED25519_ORDER  # < 2**253
    mangled = signature[:32] + s.to_bytes(32, "little")
    assert signing.verifies(b"m", signature, (bytes(key.verify_key),))
    assert not signing.verifies(b"m", mangled, (bytes(key.verify_key),))


def test_verifying_a_32_mib_manifest_holds_none_of_it(tmp_path: Path, keygen: Keygen) -> None:
    """Verifying and parsing a signed 32 MiB manifest allocates less than 2 MiB (traced
    by tracemalloc): the bytes stream through the hash and the parser, never held."""
    import tracemalloc

    private, public = keygen("a")
    root = tmp_path / "b"
    root.mkdir()
    manifest = b'{"files": {}, "pad": "' + b"x" * (DEFAULT_LIMITS.max_bytes - 40) + b'"}'
    (root / "manifest.json").write_bytes(manifest)
    sign_bundle(root, private)
    del manifest
    keys = signing.load_trusted_keys(public)
    tracemalloc.start()
    try:
        parsed = read_signed_manifest(root, "manifest.json", keys)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert parsed.files == {}
    assert (root / "manifest.json").stat().st_size > DEFAULT_LIMITS.max_bytes - 100
    assert peak < 2 * 1024 * 1024, f"peak {peak} B for a 32 MiB manifest"


# -- the signed manifest read once (parse and verify in one pass) ---------------------------


def signed_reason(root: Path, keys: signing.TrustedKeys) -> str:
    from service.bundle import read_signed_manifest

    with pytest.raises(BundleRejected) as info:
        read_signed_manifest(root, "manifest.json", keys)
    return info.value.reason


def test_signed_manifest_is_parsed_and_verified_in_one_read(tmp_path: Path, keygen: Keygen) -> None:
    """A signed manifest is returned parsed once its signature verified."""
    from service.bundle import read_signed_manifest

    private, public = keygen("one")
    write_bundle(tmp_path, {"m.bin": b"x"})
    sign_bundle(tmp_path, private)
    manifest = read_signed_manifest(tmp_path, "manifest.json", signing.load_trusted_keys(public))
    assert manifest.version == "v1" and list(manifest.files) == ["m.bin"]


def test_bad_signature_wins_over_a_malformed_manifest(tmp_path: Path, keygen: Keygen) -> None:
    """A manifest that is not JSON and not signed by a trusted key is signature_invalid."""
    private, _public = keygen("one")
    _other_private, other_public = keygen("other")
    (tmp_path / "manifest.json").write_bytes(b"{not json" + b" " * 200_000)
    sign_bundle(tmp_path, private)
    assert signed_reason(tmp_path, signing.load_trusted_keys(other_public)) == "signature_invalid"


def test_malformed_but_signed_manifest_is_manifest_invalid(tmp_path: Path, keygen: Keygen) -> None:
    """A correctly signed manifest that is not JSON is manifest_invalid, after the check."""
    private, public = keygen("one")
    (tmp_path / "manifest.json").write_bytes(b"[1, 2" + b" " * 200_000)
    sign_bundle(tmp_path, private)
    assert signed_reason(tmp_path, signing.load_trusted_keys(public)) == "manifest_invalid"


def test_signed_manifest_without_signature_is_signature_missing(
    tmp_path: Path, keygen: Keygen
) -> None:
    """No <manifest>.sig: signature_missing, before the manifest is read."""
    _private, public = keygen("one")
    write_bundle(tmp_path, {"m.bin": b"x"})
    assert signed_reason(tmp_path, signing.load_trusted_keys(public)) == "signature_missing"


def test_one_changed_byte_is_signature_invalid(tmp_path: Path, keygen: Keygen) -> None:
    """A byte changed after signing (whitespace even) fails the one-read verification."""
    private, public = keygen("one")
    manifest = write_bundle(tmp_path, {"m.bin": b"x"})
    sign_bundle(tmp_path, private)
    (tmp_path / "manifest.json").write_bytes(manifest + b" ")
    assert signed_reason(tmp_path, signing.load_trusted_keys(public)) == "signature_invalid"
