"""Validation of a claimed bundle: its tree, its manifest and the files the manifest lists.

Parsing decides (pure functions over bytes and values); the ``check_*`` functions read
the bundle. Every problem is a :class:`BundleRejected` with a fixed reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from service.errors import BundleRejected

VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_MANIFEST_BYTES = 32 * 1024 * 1024
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
    if not isinstance(spec, dict):
        raise BundleRejected("manifest_invalid", f"files[{name!r}] is not an object")
    sha = spec.get("sha256")
    if not isinstance(sha, str) or not SHA256_RE.match(sha):
        raise BundleRejected("manifest_invalid", f"files[{name!r}].sha256 is not 64 lowercase hex")
    size = spec.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise BundleRejected("manifest_invalid", f"files[{name!r}].size is not a byte count")
    return FileSpec(sha, size)


def _load_json(data: bytes) -> object:
    if len(data) > MAX_MANIFEST_BYTES:
        raise BundleRejected("manifest_invalid", f"manifest is larger than {MAX_MANIFEST_BYTES} B")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise BundleRejected("manifest_invalid", f"manifest is not valid JSON: {exc}") from None


def parse_manifest(data: bytes) -> Manifest:
    """Decide whether manifest bytes are acceptable (SPEC section 3)."""
    raw = _load_json(data)
    if not isinstance(raw, dict):
        raise BundleRejected("manifest_invalid", "manifest is not a JSON object")
    version = raw.get("version")
    if version is not None and not is_valid_version(version):
        raise BundleRejected("manifest_invalid", f"version {version!r} is not a valid name")
    files = raw.get("files", {})
    if not isinstance(files, dict):
        raise BundleRejected("manifest_invalid", "files is not an object")
    specs = {}
    for name, spec in files.items():
        safe_relative_path(name)
        specs[name] = _parse_file_spec(name, spec)
    return Manifest(version, specs)


def manifest_poll_interval(raw: object) -> object:
    """The raw ``sidecar.poll_interval_seconds`` of a parsed manifest, or None."""
    if isinstance(raw, dict) and isinstance(raw.get("sidecar"), dict):
        return raw["sidecar"].get("poll_interval_seconds")
    return None


def _check_symlink(root: Path, real_root: str, path: Path) -> None:
    target = os.readlink(path)
    real = os.path.realpath(path)
    inside = real == real_root or real.startswith(real_root + os.sep)
    if os.path.isabs(target) or not inside:
        rel = path.relative_to(root)
        raise BundleRejected("unsafe_path", f"symlink {rel} points outside the bundle: {target!r}")


@dataclass(frozen=True)
class TreeScan:
    """What a walk of a claimed bundle found: entries, and files with other hard links."""

    entries: int
    hard_linked: tuple[str, ...] = ()


def check_tree(root: Path) -> TreeScan:
    """Reject devices, fifos, sockets, symlinks that leave the bundle, and an empty bundle.

    One scandir walk (no path objects per file: this is most of a promotion's CPU time
    for bundles of many files).
    """
    real_root = os.path.realpath(root)
    entries, linked, stack = 0, [], [os.fspath(root)]
    while stack:
        with os.scandir(stack.pop()) as directory:
            for entry in directory:
                entries += 1
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
                elif stat.S_ISLNK(st.st_mode):
                    _check_symlink(root, real_root, Path(entry.path))
                elif not stat.S_ISREG(st.st_mode):
                    rel = os.path.relpath(entry.path, root)
                    raise BundleRejected("unsafe_path", f"{rel} is not a regular file or directory")
                elif st.st_nlink > 1:
                    linked.append(entry.path)
    if entries == 0:
        raise BundleRejected("empty_bundle", "READY was staged with no bundle")
    return TreeScan(entries, tuple(linked))


def read_manifest(root: Path, name: str, required: bool) -> Manifest | None:
    path = root / name
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        if required:
            raise BundleRejected("manifest_missing", f"{name} is missing") from None
        return None
    if not stat.S_ISREG(mode):
        raise BundleRejected("manifest_invalid", f"{name} is not a regular file")
    return parse_manifest(path.read_bytes())


def sha256_of(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def check_present(root: Path, name: str, spec: FileSpec) -> Path:
    """The listed file exists as a regular file of the listed size; its path."""
    path = root / safe_relative_path(name)
    if not path.is_file():
        raise BundleRejected("file_missing", f"listed file {name!r} is missing")
    size = path.stat().st_size
    if spec.size is not None and size != spec.size:
        detail = f"{name!r} has {size} bytes, the manifest says {spec.size}"
        raise BundleRejected("size_mismatch", detail)
    return path


def check_files(root: Path, files: dict[str, FileSpec]) -> None:
    """Presence and sizes first (cheap), then the checksums, hashed on every core.

    hashlib releases the GIL while it hashes, so threads use both cores of a small
    machine when a bundle has several files.
    """
    paths = [check_present(root, name, spec) for name, spec in files.items()]
    workers = min(HASH_WORKERS, len(paths))
    if workers <= 1:
        digests = [sha256_of(p) for p in paths]
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sha256") as pool:
            digests = list(pool.map(sha256_of, paths))
    for (name, spec), digest in zip(files.items(), digests, strict=True):
        if digest != spec.sha256:
            raise BundleRejected("checksum_mismatch", f"{name!r} does not match its sha256")


def check_contents(root: Path, manifest_name: str, require_manifest: bool) -> Manifest | None:
    """The manifest (None when there is none) after every listed file checked out."""
    manifest = read_manifest(root, manifest_name, require_manifest)
    if manifest is not None:
        check_files(root, manifest.files)
    return manifest
