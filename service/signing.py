"""Ed25519 signatures over the manifest of a bundle (SPEC section 12).

``<manifest>.sig`` holds the base64 of the 64-byte Ed25519 signature over the exact
bytes of the manifest file. A signed bundle is trusted only when the signature verifies
under one of the trusted keys AND every regular file of the bundle is listed in the
manifest's ``files`` (so the signature, through the sha256 of each file, covers every
byte that will be served).

Keys are PEM: public keys as SubjectPublicKeyInfo (``openssl pkey -pubout``), private
keys as unencrypted PKCS#8 (``openssl genpkey -algorithm ed25519``). For Ed25519 both
DER encodings are a fixed prefix followed by the 32 raw key bytes, so they are parsed
here without an ASN.1 library. The crypto library (PyNaCl) is imported only inside the
functions that need it: a sidecar without ``TRUSTED_KEYS_FILE`` never loads it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from service.errors import BundleRejected, ConfigError, TransientError

SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
PKCS8_PREFIX = bytes.fromhex("302e020100300506032b657004220420")
KEY_BYTES = 32
SIGNATURE_BYTES = 64
MAX_SIGNATURE_FILE_BYTES = 4096
MAX_KEY_FILE_BYTES = 1024 * 1024
SIG_SUFFIX = ".sig"
PEM_BLOCK_RE = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\s*(.*?)\s*-----END \1-----", re.DOTALL)
_WHITESPACE = re.compile(rb"\s+")


class KeyFileError(ConfigError):
    """A key file is missing, unreadable or not what it should be; the message names it."""


@dataclass(frozen=True)
class TrustedKeys:
    """The raw 32-byte Ed25519 public keys of a TRUSTED_KEYS_FILE."""

    path: Path
    keys: tuple[bytes, ...]


# -- deciding: pure functions over bytes ---------------------------------------------------


def pem_blocks(text: bytes) -> list[tuple[str, bytes]]:
    """(label, DER) of every PEM block; text outside the blocks is ignored as openssl does."""
    blocks = []
    for match in PEM_BLOCK_RE.finditer(text):
        body = _WHITESPACE.sub(b"", match.group(2))
        try:
            der = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"a {match.group(1).decode()} block is not valid base64") from None
        blocks.append((match.group(1).decode(), der))
    return blocks


def public_keys_from_pem(text: bytes) -> tuple[bytes, ...]:
    """The raw Ed25519 keys of PUBLIC KEY blocks; ValueError says what is wrong."""
    blocks = pem_blocks(text)
    if not blocks:
        raise ValueError("no PEM block (expected Ed25519 PUBLIC KEY blocks)")
    keys = []
    for number, (label, der) in enumerate(blocks, 1):
        if label != "PUBLIC KEY":
            raise ValueError(f"block {number} is a {label}, not a PUBLIC KEY")
        if len(der) != len(SPKI_PREFIX) + KEY_BYTES or not der.startswith(SPKI_PREFIX):
            raise ValueError(f"block {number} is not an Ed25519 public key")
        keys.append(der[len(SPKI_PREFIX) :])
    return tuple(keys)


def private_seed_from_pem(text: bytes) -> bytes:
    """The 32-byte seed of the single Ed25519 PKCS#8 PRIVATE KEY block."""
    blocks = pem_blocks(text)
    if [label for label, _ in blocks] != ["PRIVATE KEY"]:
        raise ValueError("expected exactly one unencrypted PRIVATE KEY block (PKCS#8)")
    der = blocks[0][1]
    if len(der) != len(PKCS8_PREFIX) + KEY_BYTES or not der.startswith(PKCS8_PREFIX):
        raise ValueError("the PRIVATE KEY is not an Ed25519 key")
    return der[len(PKCS8_PREFIX) :]


def decode_signature(text: bytes) -> bytes:
    """The 64 signature bytes of a .sig file's base64 text (whitespace ignored)."""
    try:
        raw = base64.b64decode(_WHITESPACE.sub(b"", text), validate=True)
    except (binascii.Error, ValueError):
        raise BundleRejected("signature_invalid", "the signature is not valid base64") from None
    if len(raw) != SIGNATURE_BYTES:
        raise BundleRejected(
            "signature_invalid", f"the signature has {len(raw)} bytes, not {SIGNATURE_BYTES}"
        )
    return raw


def encode_signature(raw: bytes) -> bytes:
    return base64.b64encode(raw) + b"\n"


ED25519_ORDER = 2**252 + 27742317777372353535851937790883648493  # L, the group order


def verifies(data: bytes, signature: bytes, keys: tuple[bytes, ...]) -> bool:
    """Whether signature over data verifies under at least one of keys."""
    return any(_verify_one(data, signature, key) for key in keys)


class StreamVerifier:
    """Verifies a signature over bytes fed in chunks (SHA-512(R || A || M) per key).

    The manifest is read once: the same chunks feed the manifest reader and these
    hashes, so nothing can change the bytes between their check and their parse, and a
    32 MiB manifest is never held in memory.
    """

    def __init__(self, signature: bytes, keys: tuple[bytes, ...]) -> None:
        self.signature = signature
        self.keys = keys
        self._hashers = [hashlib.sha512(signature[:32] + key) for key in keys]

    def update(self, chunk: bytes) -> None:
        for hasher in self._hashers:
            hasher.update(chunk)

    def verified(self) -> bool:
        return any(
            _verify_with_k(hasher.digest(), self.signature, key)
            for hasher, key in zip(self._hashers, self.keys, strict=True)
        )


def signature_of(root: Path, manifest_name: str) -> bytes:
    """The decoded signature of the bundle's manifest; signature_missing/invalid."""
    return decode_signature(_read_signature(root, manifest_name + SIG_SUFFIX))


def _verify_one(data: bytes, signature: bytes, key: bytes) -> bool:
    """RFC 8032 Ed25519 verification, cofactorless as libsodium does, without copying data.

    PyNaCl's VerifyKey.verify concatenates signature and message and has libsodium
    write the message out again: three copies of a 32 MiB manifest. Verification needs
    the message once, in SHA-512(R || A || M), so the hash is streamed with hashlib and
    the group arithmetic is libsodium's: [S]B - [k]A must encode to R. S must be
    canonical and A a valid point of the prime-order subgroup (small-order keys refused),
    as crypto_sign_verify_detached requires. The tests cross-check it against PyNaCl.
    """
    return _verify_with_k(_sha512_parts(signature[:32], key, data), signature, key)


def _verify_with_k(digest: bytes, signature: bytes, key: bytes) -> bool:
    """The verification equation, given SHA-512(R || A || M) (see _verify_one)."""
    import hmac

    from nacl import bindings
    from nacl.exceptions import CryptoError

    r_bytes, s_bytes = signature[:32], signature[32:]
    if len(signature) != SIGNATURE_BYTES or len(key) != KEY_BYTES:
        return False
    if int.from_bytes(s_bytes, "little") >= ED25519_ORDER:
        return False
    try:
        if not bindings.crypto_core_ed25519_is_valid_point(key):
            return False
        k = bindings.crypto_core_ed25519_scalar_reduce(digest)
        s_b = bindings.crypto_scalarmult_ed25519_base_noclamp(s_bytes)
        k_a = bindings.crypto_scalarmult_ed25519_noclamp(k, key)
        expected = bindings.crypto_core_ed25519_sub(s_b, k_a)
    except (CryptoError, ValueError, TypeError):  # an identity result, a bad encoding
        return False
    return hmac.compare_digest(expected, r_bytes)


def _sha512_parts(*parts: bytes) -> bytes:
    hasher = hashlib.sha512()
    for part in parts:
        hasher.update(part)
    return hasher.digest()


# -- doing: thin I/O -----------------------------------------------------------------------


def _read_bounded(path: Path, limit: int, follow: bool = False) -> bytes:
    """Read a regular file of at most limit bytes, through a symlink only when follow.

    Bundle files are never read through a link; key files are (a Kubernetes Secret
    volume presents its files as symlinks into ``..data/``).
    """
    flags = os.O_RDONLY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    with os.fdopen(os.open(path, flags), "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise IsADirectoryError("not a regular file")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise OverflowError(f"larger than {limit} B")
    return data


def load_trusted_keys(path: Path) -> TrustedKeys:
    """The keys of a TRUSTED_KEYS_FILE; KeyFileError (one line naming the file) if bad."""
    try:
        data = _read_bounded(path, MAX_KEY_FILE_BYTES, follow=True)
        keys = public_keys_from_pem(data)
    except (OSError, OverflowError, ValueError) as exc:
        raise KeyFileError(f"TRUSTED_KEYS_FILE {path}: {_reason(exc)}") from None
    return TrustedKeys(path, keys)


def reload_trusted_keys(path: Path) -> TrustedKeys:
    """Re-read before a validation: any failure is transient (the bundle stays staged)."""
    try:
        return load_trusted_keys(path)
    except KeyFileError as exc:
        raise TransientError(exc.detail) from None


def _reason(exc: BaseException) -> str:
    """The cause in a few words, without repeating the path."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc)


def _read_signature(root: Path, name: str) -> bytes:
    path = root / name
    if not os.path.lexists(path):
        raise BundleRejected("signature_missing", f"{name} is missing")
    try:
        return _read_bounded(path, MAX_SIGNATURE_FILE_BYTES)
    except (OSError, OverflowError):
        detail = f"{name} is not a regular file of at most {MAX_SIGNATURE_FILE_BYTES} B"
        raise BundleRejected("signature_invalid", detail) from None


def regular_files(root: Path) -> Iterator[str]:
    """Relative POSIX paths of every regular file under root (symlinks not followed)."""
    stack = [os.fspath(root)]
    while stack:
        with os.scandir(stack.pop()) as directory:
            for entry in directory:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    yield Path(os.path.relpath(entry.path, root)).as_posix()


def check_coverage(root: Path, manifest_name: str, listed: Iterable[str]) -> None:
    """Every regular file of the bundle other than the manifest and its signature is
    listed (``listed``: the keys of the manifest's ``files``, as the validation parsed
    them); else signature_invalid naming one file that is not."""
    covered = {PurePosixPath(name).as_posix() for name in listed}
    covered.update((manifest_name, manifest_name + SIG_SUFFIX, "READY"))
    for rel in regular_files(root):
        if rel not in covered:
            raise BundleRejected(
                "signature_invalid", f"{rel!r} is not listed in the signed manifest's files"
            )


def load_private_seed(path: Path) -> bytes:
    try:
        return private_seed_from_pem(_read_bounded(path, MAX_KEY_FILE_BYTES, follow=True))
    except (OSError, OverflowError, ValueError) as exc:
        raise KeyFileError(f"signing key {path}: {_reason(exc)}") from None


def sign_manifest(manifest_bytes: bytes, private_key_pem_path: Path) -> bytes:
    """The content of ``<manifest>.sig`` for manifest_bytes: base64 and a newline."""
    from nacl.signing import SigningKey

    seed = load_private_seed(private_key_pem_path)
    signed = SigningKey(seed).sign(manifest_bytes)
    return encode_signature(signed.signature)
