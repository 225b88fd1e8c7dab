"""Validation of a claimed bundle: its tree, its manifest and the files the manifest lists.

Parsing decides (pure functions over bytes and values); the ``check_*`` functions read
the bundle. Every problem is a :class:`BundleRejected` with a fixed reason.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from service.errors import BundleRejected
from service.manifest_reader import (
    ABSENT,
    DEFAULT_LIMITS,
    FileEntry,
    ManifestDoc,
    read_manifest_file,
)
from service.manifest_reader import read_manifest as read_manifest_stream
from service.progress import Progress
from service.signing import StreamVerifier, TrustedKeys, signature_of

VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
SHA256_RE = re.compile(r"^[0-9a-f]{64}\Z")
HASH_WORKERS = min(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class FileSpec:
    sha256: str
    size: int | None = None


@dataclass(frozen=True)
class Manifest:
    version: str | None = None
    files: dict[str, FileSpec] = field(default_factory=dict)


def is_valid_version(value: object) -> bool:
    return isinstance(value, str) and VERSION_RE.match(value) is not None


def safe_relative_path(raw: str) -> PurePosixPath:
    """The path of a manifest entry, or unsafe_path for absolute and ``..`` paths."""
    path = PurePosixPath(raw)
    if not raw or "\x00" in raw or path.is_absolute() or ".." in path.parts:
        raise BundleRejected("unsafe_path", f"manifest lists an unsafe path: {raw!r}")
    return path


def _parse_file_spec(name: str, spec: object) -> FileSpec:
    if not isinstance(spec, FileEntry):
        raise BundleRejected("manifest_invalid", f"files[{name[:80]!r}] is not an object")
    sha = spec.sha256
    if not isinstance(sha, str) or not SHA256_RE.match(sha):
        raise BundleRejected(
            "manifest_invalid", f"files[{name[:80]!r}].sha256 is not 64 lowercase hex"
        )
    size = None if spec.size is ABSENT else spec.size
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise BundleRejected("manifest_invalid", f"files[{name[:80]!r}].size is not a byte count")
    return FileSpec(sha, size)


def manifest_from_doc(doc: ManifestDoc) -> Manifest:
    """Decide whether what a manifest says is acceptable (SPEC section 3)."""
    version = None if doc.version is ABSENT else doc.version
    if version is not None and not is_valid_version(version):
        raise BundleRejected(
            "manifest_invalid", f"version {str(version)[:80]!r} is not a valid name"
        )
    files = {} if doc.files is ABSENT else doc.files
    if not isinstance(files, dict):
        raise BundleRejected("manifest_invalid", "files is not an object")
    specs = {}
    for name, spec in files.items():
        safe_relative_path(name)
        specs[name] = _parse_file_spec(name, spec)
    assert version is None or isinstance(version, str)
    return Manifest(version, specs)


def parse_manifest(data: bytes) -> Manifest:
    """Decide whether manifest bytes are acceptable; bounded like a manifest file."""
    return manifest_from_doc(read_manifest_stream(io.BytesIO(data)))


def manifest_poll_interval(doc: ManifestDoc) -> object:
    """The raw ``sidecar.poll_interval_seconds`` of a manifest, or None."""
    return None if doc.poll_interval_seconds is ABSENT else doc.poll_interval_seconds


MAX_LINK_HOPS = 40  # as the kernel's ELOOP limit
# Limits of a bundle's tree, so that a walk costs bounded memory (SPEC section 3).
MAX_TREE_ENTRIES = 100_000
MAX_LINKS = 10_000
MAX_TREE_DEPTH = 32


def lexical_target(link: PurePosixPath, target: str) -> tuple[str, ...] | None:
    """Where a link at ``link`` (relative to the bundle root) points, resolved lexically
    from its own directory; None when it is absolute or a step climbs above the root."""
    if not target or target.startswith("/"):
        return None
    parts = list(link.parent.parts)
    for part in target.split("/"):
        if part == "..":
            if not parts:
                return None
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return tuple(parts)


def resolves_inside(link: PurePosixPath, links: dict[str, str]) -> bool:
    """Whether following ``link`` the way the kernel would, through the other links of
    the bundle, stays inside the bundle root at every step.

    The lexical rule alone misses a link whose path crosses another link and then
    climbs (``a/s -> ../b`` and ``u -> a/s/../..``): ``..`` applies to the real
    directory. Everything is relative to the bundle, so the verdict does not depend on
    where the bundle sits.
    """
    current: list[str] = list(link.parent.parts)
    pending = links[link.as_posix()].split("/")
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not current:
                return False
            current.pop()
            continue
        key = "/".join([*current, part])
        if key not in links:
            current.append(part)
            continue
        hops += 1
        target = links[key]
        if hops > MAX_LINK_HOPS or target.startswith("/"):
            return False
        pending[:0] = target.split("/")
    return True


def check_links(links: dict[str, str]) -> None:
    """unsafe_path for a link that is absolute or leaves the bundle (SPEC section 3)."""
    for rel, target in links.items():
        path = PurePosixPath(rel)
        if lexical_target(path, target) is None or not resolves_inside(path, links):
            raise BundleRejected(
                "unsafe_path", f"symlink {rel!r} points outside the bundle: {target!r}"
            )


@dataclass(frozen=True)
class TreeScan:
    """What a walk of a claimed bundle found."""

    entries: int
    regular_files: int
    hard_linked: int = 0


def _not_content(rel: str, manifest_name: str) -> bool:
    return rel in (manifest_name, f"{manifest_name}.sig")


def check_tree(root: Path, manifest_name: str = "manifest.json") -> TreeScan:
    """Reject devices, fifos, sockets, symlinks that leave the bundle, an empty bundle.

    One scandir walk (no path objects per file: this is most of a promotion's CPU time
    for bundles of many files).
    """
    top = os.fspath(root)
    entries, regular, linked = 0, 0, 0
    links: dict[str, str] = {}
    stack = [(top, 0)]
    while stack:
        path, depth = stack.pop()
        with os.scandir(path) as directory:
            for entry in directory:
                entries += 1
                st = entry.stat(follow_symlinks=False)
                rel = os.path.relpath(entry.path, top)
                _check_limits(entries, len(links), depth, rel)
                if stat.S_ISDIR(st.st_mode):
                    stack.append((entry.path, depth + 1))
                elif stat.S_ISLNK(st.st_mode):
                    links[rel] = os.readlink(entry.path)
                elif not stat.S_ISREG(st.st_mode):
                    raise BundleRejected(
                        "unsafe_path", f"{rel!r} is not a regular file or directory"
                    )
                else:
                    regular += 0 if _not_content(rel, manifest_name) else 1
                    linked += st.st_nlink > 1
    check_links(links)
    if regular == 0:
        raise BundleRejected("empty_bundle", "the bundle holds no file besides its manifest")
    return TreeScan(entries, regular, linked)


def _check_limits(entries: int, links: int, depth: int, rel: str) -> None:
    if entries > MAX_TREE_ENTRIES:
        raise BundleRejected("unsafe_path", f"the bundle has more than {MAX_TREE_ENTRIES} entries")
    if links > MAX_LINKS:
        raise BundleRejected("unsafe_path", f"the bundle has more than {MAX_LINKS} symlinks")
    if depth >= MAX_TREE_DEPTH:
        raise BundleRejected(
            "unsafe_path", f"{rel[:80]!r} is nested deeper than {MAX_TREE_DEPTH} directories"
        )


def read_manifest(
    root: Path, name: str, required: bool, progress: Progress | None = None
) -> Manifest | None:
    path = root / name
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        if required:
            raise BundleRejected("manifest_missing", f"{name} is missing") from None
        return None
    if not stat.S_ISREG(mode):
        raise BundleRejected("manifest_invalid", f"{name} is not a regular file")
    step = progress.step if progress is not None else _nothing
    return manifest_from_doc(read_manifest_file(path, step=step))


class _Tee:
    """A manifest file whose every chunk read also feeds the signature verifier."""

    def __init__(self, fh: BinaryIO, verifier: StreamVerifier) -> None:
        self.fh, self.verifier = fh, verifier

    def read(self, size: int = -1) -> bytes:
        data = self.fh.read(size)
        self.verifier.update(data)
        return data


def read_signed_manifest(
    root: Path, name: str, keys: TrustedKeys, progress: Progress | None = None
) -> Manifest:
    """The manifest, read once: its bytes parsed and their signature verified together.

    Nothing can change the bytes between the check and the parse, and a manifest at the
    32 MiB cap is never held in memory. signature_missing / signature_invalid first:
    a manifest that is also malformed is reported by its signature when that fails.
    """
    verifier = StreamVerifier(signature_of(root, name), keys.keys)
    path = root / name
    if not os.path.lexists(path) or not stat.S_ISREG(path.lstat().st_mode):
        raise BundleRejected("manifest_missing", f"{name} is missing (the signature covers it)")
    step = progress.step if progress is not None else _nothing
    with path.open("rb") as fh:
        if os.fstat(fh.fileno()).st_size > DEFAULT_LIMITS.max_bytes:
            raise BundleRejected(  # the cap is decided before the bytes cost anything
                "manifest_invalid", f"{name} is larger than {DEFAULT_LIMITS.max_bytes} bytes"
            )
        tee = _Tee(fh, verifier)
        try:
            doc: ManifestDoc | BundleRejected = read_manifest_stream(tee, step=step)
        except BundleRejected as exc:
            doc = exc
        while tee.read(CHUNK):  # a parse that stopped early: verify every byte anyway
            step()
    if not verifier.verified():
        raise BundleRejected(
            "signature_invalid", f"no key of {keys.path} verifies the signature of {name}"
        )
    if isinstance(doc, BundleRejected):
        raise doc
    return manifest_from_doc(doc)


CHUNK = 1024 * 1024


def sha256_of(path: Path, progress: Progress | None = None) -> str:
    """The sha256 of a file, read in chunks so that a stop can interrupt a long hash."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)  # releases the GIL: hashing threads use every core
            if progress is not None:
                progress.step()
    return digest.hexdigest()


def check_present(root: Path, name: str, spec: FileSpec) -> Path:
    """The listed file exists as a regular file of the listed size; its path."""
    path = root / safe_relative_path(name)
    try:
        st = path.stat()  # follows the bundle's own links: they stay inside it
    except (FileNotFoundError, NotADirectoryError):
        raise BundleRejected("file_missing", f"listed file {name!r} is missing") from None
    if not stat.S_ISREG(st.st_mode):
        raise BundleRejected("file_missing", f"listed file {name!r} is not a regular file")
    size = st.st_size
    if spec.size is not None and size != spec.size:
        detail = f"{name!r} has {size} bytes, the manifest says {spec.size}"
        raise BundleRejected("size_mismatch", detail)
    return path


HASH_BATCH = 64  # files hashed per round: bounds the futures and paths held at once


def _hash_matches(root: Path, name: str, spec: FileSpec, progress: Progress | None) -> bool:
    return sha256_of(root / safe_relative_path(name), progress) == spec.sha256


def check_files(root: Path, files: dict[str, FileSpec], progress: Progress | None = None) -> None:
    """Presence and sizes first (cheap), then the checksums, hashed on every core.

    hashlib releases the GIL while it hashes, so threads use both cores of a small
    machine when a bundle has several files. Files go to the threads in small batches,
    so that the memory held does not grow with the number of files.
    """
    for name, spec in files.items():
        check_present(root, name, spec)
    items = list(files.items()) if len(files) > 1 else []
    workers = min(HASH_WORKERS, len(files))
    if workers <= 1:
        for name, spec in files.items():
            _raise_unless(_hash_matches(root, name, spec, progress), name)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sha256") as pool:
        for start in range(0, len(items), HASH_BATCH):
            batch = items[start : start + HASH_BATCH]
            results = pool.map(lambda item: _hash_matches(root, item[0], item[1], progress), batch)
            for (name, _spec), ok in zip(batch, results, strict=True):
                _raise_unless(ok, name)


def _raise_unless(ok: bool, name: str) -> None:
    if not ok:
        raise BundleRejected("checksum_mismatch", f"{name[:200]!r} does not match its sha256")


def check_contents(
    root: Path, manifest_name: str, require_manifest: bool, progress: Progress | None = None
) -> Manifest | None:
    """The manifest (None when there is none) after every listed file checked out."""
    manifest = read_manifest(root, manifest_name, require_manifest, progress)
    if manifest is not None:
        check_files(root, manifest.files, progress)
    return manifest


def _nothing() -> None:
    """No progress to report (a manifest read outside a pass)."""
