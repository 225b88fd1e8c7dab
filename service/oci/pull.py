"""Download an artifact into its pull directory: verified, resumable, reusing local files.

``.sidecar/pull/sha256-<hex>/`` of the artifact's manifest digest holds:

- ``manifest.json``: the OCI manifest, written only after its digest checked out;
- ``blobs/<hex>.part``: a blob being downloaded (kept across crashes and dropped
  connections, resumed with a Range request);
- ``blobs/<hex>``: a complete blob, renamed from ``.part`` only after its sha256 and size
  matched;
- ``bundle/<path>``: the bundle's files, each renamed (or copied under a temporary name,
  then renamed) from a complete blob; so every name in ``bundle/`` is verified content;
- ``COMPLETE``: written last, when ``bundle/`` holds every layer.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from service import fsops
from service.errors import BundleRejected
from service.manifest_reader import FileEntry, read_manifest_file
from service.oci.artifact import Layer, parse_manifest
from service.oci.protocol import RegistryError, sha256_digest

if TYPE_CHECKING:
    from service.oci.client import RegistryClient  # the caller's, made on a download

CHUNK = 1024 * 1024
PREFIX = "sha256-"


@dataclass(frozen=True)
class PullDir:
    root: Path

    @classmethod
    def of(cls, base: Path, digest: str) -> PullDir:
        return cls(base / (PREFIX + digest.split(":", 1)[1]))

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def blobs(self) -> Path:
        return self.root / "blobs"

    @property
    def bundle(self) -> Path:
        return self.root / "bundle"

    @property
    def complete(self) -> Path:
        return self.root / "COMPLETE"

    def blob(self, digest: str) -> Path:
        return self.blobs / digest.split(":", 1)[1]

    def part(self, digest: str) -> Path:
        return self.blobs / (digest.split(":", 1)[1] + ".part")


@dataclass
class Progress:
    received: int = 0
    downloaded: int = 0
    reused: int = 0


def prune(base: Path, keep: Path | None) -> None:
    """Remove the pull directories of other digests (an abandoned or superseded pull)."""
    if not base.is_dir():
        return
    for entry in base.iterdir():
        if entry != keep and entry.name.startswith(PREFIX):
            fsops.remove_entry(entry)


def fetch_manifest(client: RegistryClient, pull: PullDir, digest: str) -> list[Layer]:
    """The artifact's layers, from the verified copy in the pull dir or the registry."""
    try:
        data = pull.manifest.read_bytes()
    except FileNotFoundError:
        data = b""
    if sha256_digest(data) != digest:
        data = client.get_manifest(digest)
        pull.root.mkdir(parents=True, exist_ok=True)
        fsops.atomic_write_bytes(pull.manifest, data)
    return parse_manifest(data)


def reusable_files(version_dir: Path | None, manifest_name: str) -> dict[str, Path]:
    """``sha256:<hex>`` -> a regular file of the current version, from its manifest."""
    if version_dir is None:
        return {}
    try:  # the streaming reader: bounded memory whatever the manifest holds
        files = read_manifest_file(version_dir / manifest_name).files
    except (OSError, BundleRejected):
        return {}
    found: dict[str, Path] = {}
    for name, spec in (files if isinstance(files, dict) else {}).items():
        sha = spec.sha256 if isinstance(spec, FileEntry) else None
        path = version_dir / name
        safe = not PurePosixPath(name).is_absolute() and ".." not in PurePosixPath(name).parts
        if isinstance(sha, str) and safe and _is_regular(path):
            found.setdefault(f"sha256:{sha}", path)
    return found


def _is_regular(path: Path) -> bool:
    try:
        return path.is_file() and not path.is_symlink()
    except OSError:
        return False


def copy_verified(src: Path, part: Path, digest: str) -> bool:
    """Copy a local file into ``part`` while hashing it; False (nothing left) on mismatch."""
    hasher = hashlib.sha256()
    with src.open("rb") as fin, part.open("wb") as fout:
        while chunk := fin.read(CHUNK):
            hasher.update(chunk)
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    if "sha256:" + hasher.hexdigest() != digest:
        part.unlink()
        return False
    return True


def _reuse(local: Path | None, layer: Layer, part: Path) -> bool:
    """Copy the current version's file of that digest, when it still checks out."""
    if local is None:
        return False
    try:
        return local.stat().st_size == layer.size and copy_verified(local, part, layer.digest)
    except OSError:  # retention removed it meanwhile, or it is unreadable: download
        part.unlink(missing_ok=True)
        return False


def _obtain_blob(
    client: RegistryClient,
    pull: PullDir,
    layer: Layer,
    reuse: Mapping[str, Path],
    progress: Progress,
    on_chunk: Callable[[int], None] | None,
) -> None:
    if pull.blob(layer.digest).exists():
        return
    part = pull.part(layer.digest)
    if _reuse(reuse.get(layer.digest), layer, part):
        progress.reused += 1
    else:
        progress.received += client.download_blob(layer.descriptor(), part, on_chunk)
        progress.downloaded += 1
    os.replace(part, pull.blob(layer.digest))


def _place(pull: PullDir, digest: str, paths: list[str]) -> None:
    """Give the verified blob its bundle paths: copies first, the rename last."""
    blob = pull.blob(digest)
    for path in paths[:-1]:
        target = pull.bundle / path
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp-{secrets.token_hex(4)}")
            shutil.copyfile(blob, tmp)
            fsops.fsync_file(tmp)
            os.replace(tmp, target)
    last = pull.bundle / paths[-1]
    if not last.exists():
        last.parent.mkdir(parents=True, exist_ok=True)
        os.replace(blob, last)


def _by_digest(layers: Iterable[Layer]) -> dict[str, list[Layer]]:
    groups: dict[str, list[Layer]] = {}
    for layer in layers:
        groups.setdefault(layer.digest, []).append(layer)
    return groups


def download(
    client: RegistryClient,
    pull: PullDir,
    digest: str,
    reuse: Mapping[str, Path],
    on_chunk: Callable[[int], None] | None = None,
) -> Progress:
    """Make ``pull.bundle`` hold every file of the artifact; what it took.

    Resumes whatever an earlier attempt left; raises RegistryError (its reason counted by
    the caller) or OSError (``io_error``), keeping complete blobs and partial downloads.
    """
    progress = Progress()
    if pull.complete.exists():
        return progress
    layers = fetch_manifest(client, pull, digest)
    pull.blobs.mkdir(parents=True, exist_ok=True)
    pull.bundle.mkdir(exist_ok=True)
    for blob_digest, group in _by_digest(layers).items():
        if all((pull.bundle / layer.path).exists() for layer in group):
            continue
        _obtain_blob(client, pull, group[0], reuse, progress, on_chunk)
        _place(pull, blob_digest, [layer.path for layer in group])
    fsops.sync_tree(pull.bundle)
    fsops.atomic_write_bytes(pull.complete, b"")
    return progress


def layer_paths(pull: PullDir) -> list[Layer]:
    """The layers of the verified manifest in the pull dir."""
    data = pull.manifest.read_bytes()
    return parse_manifest(data)


__all__ = [
    "Progress",
    "PullDir",
    "RegistryError",
    "download",
    "layer_paths",
    "prune",
    "reusable_files",
]
