"""``forecaster-sidecar stage``: copy a bundle into staging the way the contract asks.

It checks the bundle as the sidecar will (links, special files, an empty bundle, the
producer's own checksums and sizes: verified, never overwritten), copies and hashes
every file in one read, fsyncs, writes the manifest (the producer's bytes unchanged when
they already list every file, so a signature stays valid) and creates READY last.
Staging was empty before: on any failure, Ctrl-C included, it is emptied again.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from service import fsops
from service.bundle import (
    CHUNK,
    FileSpec,
    Manifest,
    check_links,
    is_valid_version,
    parse_manifest,
    sha256_of,
)
from service.errors import BundleRejected, ConfigError, SidecarError
from service.layout import Layout
from service.manifest_reader import DEFAULT_LIMITS

ProgressFn = Callable[[int, int], None]


class StageRefused(SidecarError):
    reason = "stage"


@dataclass(frozen=True)
class Staged:
    """What was staged: regular files, their total size, the version (None: generated)."""

    files: int
    total_bytes: int
    version: str | None


@dataclass(frozen=True)
class SourceTree:
    """A bundle directory as found: regular files with sizes, links, directories."""

    files: dict[str, int]
    links: dict[str, str]
    dirs: list[str]

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())


def scan_source(src: Path, skip: set[str]) -> SourceTree:
    """Walk the bundle without following links; refuse what the sidecar would reject."""
    files: dict[str, int] = {}
    links: dict[str, str] = {}
    dirs: list[str] = []
    for dirpath, dirnames, names in os.walk(src):
        rel_dir = Path(dirpath).relative_to(src)
        dirs += [(rel_dir / d).as_posix() for d in sorted(dirnames)]
        for name in sorted(names):
            rel = (rel_dir / name).as_posix()
            mode = os.lstat(os.path.join(dirpath, name)).st_mode
            if rel in skip:
                continue
            if stat.S_ISLNK(mode):
                links[rel] = os.readlink(os.path.join(dirpath, name))
            elif stat.S_ISREG(mode):
                files[rel] = os.lstat(os.path.join(dirpath, name)).st_size
            else:
                raise StageRefused(f"{src / rel} is not a regular file, directory or symlink")
    return SourceTree(files, links, dirs)


def read_source_manifest(src: Path, name: str) -> tuple[bytes | None, Manifest | None]:
    path = src / name
    if not os.path.lexists(path):
        return None, None
    if not path.is_file() or path.is_symlink():
        raise StageRefused(f"{path} is not a regular file")
    with path.open("rb") as fh:
        data = fh.read(DEFAULT_LIMITS.max_bytes + 1)  # more is refused by the parse
    if len(data) > DEFAULT_LIMITS.max_bytes:
        raise StageRefused(f"{path} is larger than {DEFAULT_LIMITS.max_bytes} bytes")
    try:
        return data, parse_manifest(data)
    except BundleRejected as exc:
        raise StageRefused(f"{path}: {exc.detail}") from None


def check_source(tree: SourceTree, manifest: Manifest | None, src: Path) -> None:
    """Refuse a bundle the sidecar would reject, before anything is copied."""
    try:
        check_links(tree.links)
    except BundleRejected as exc:
        raise StageRefused(f"{src}: {exc.detail}") from None
    if not tree.files:
        raise StageRefused(f"{src} holds no file besides its manifest: nothing to stage")
    for name, spec in (manifest.files if manifest else {}).items():
        if name in tree.files and spec.size is not None and spec.size != tree.files[name]:
            raise StageRefused(
                f"{src / name} has {tree.files[name]} bytes, its manifest says {spec.size}"
            )
        if name not in tree.files and name not in tree.links:
            raise StageRefused(f"{src / name} is listed in the manifest but missing")


def choose_version(manifest: Manifest | None, requested: str | None) -> str | None:
    """The version to stage under; StageRefused when --version contradicts the manifest."""
    if requested is not None and not is_valid_version(requested):
        raise ConfigError(f"--version: {requested!r} is not a valid version name")
    listed = manifest.version if manifest else None
    if requested is not None and listed is not None and requested != listed:
        raise StageRefused(f"--version {requested} contradicts the manifest's version {listed}")
    return requested or listed


class _Copier:
    """Copies regular files, hashing them in the same read, reporting progress."""

    def __init__(self, total: int, progress: ProgressFn | None) -> None:
        self.total, self.done, self.progress = total, 0, progress

    def copy(self, src: Path, dst: Path) -> str:
        digest = hashlib.sha256()
        with src.open("rb") as fin, dst.open("xb") as fout:
            while chunk := fin.read(CHUNK):
                digest.update(chunk)
                fout.write(chunk)
                self.done += len(chunk)
                if self.progress is not None:
                    self.progress(self.done, self.total)
            fout.flush()
            os.fsync(fout.fileno())
        os.chmod(dst, stat.S_IMODE(os.stat(src).st_mode))
        return digest.hexdigest()


def copy_bundle(
    src: Path, dst: Path, tree: SourceTree, listed: dict[str, FileSpec], progress: ProgressFn | None
) -> dict[str, FileSpec]:
    """Copy the tree, verifying listed checksums; the spec of every regular file."""
    for rel in tree.dirs:
        (dst / rel).mkdir()
    copier, specs = _Copier(tree.total_bytes, progress), {}
    for rel, size in tree.files.items():
        digest = copier.copy(src / rel, dst / rel)
        if rel in listed and listed[rel].sha256 != digest:
            raise StageRefused(f"{src / rel} does not match the sha256 its manifest lists")
        specs[rel] = FileSpec(digest, size)
    for rel, target in tree.links.items():
        os.symlink(target, dst / rel)
        path = dst / rel
        if rel in listed and (not path.is_file() or sha256_of(path) != listed[rel].sha256):
            raise StageRefused(f"{src / rel} does not match the sha256 its manifest lists")
    for rel in [*reversed(tree.dirs), "."]:
        fsops.fsync_dir(dst / rel)
    return specs


def manifest_bytes(
    raw: bytes | None, manifest: Manifest | None, specs: dict[str, FileSpec], version: str | None
) -> bytes:
    """The producer's manifest unchanged when it already says everything, else one
    that lists every file (the producer's other keys kept)."""
    listed = manifest.files if manifest else {}
    same_version = version == (manifest.version if manifest else None)
    if raw is not None and same_version and set(specs) <= set(listed):
        return raw
    document = json.loads(raw) if raw is not None else {}
    files = document.get("files")
    if not isinstance(files, dict):
        files = {}
    for rel, spec in specs.items():
        files.setdefault(rel, {"sha256": spec.sha256, "size": spec.size})
    document["files"] = files
    if version is not None:
        document["version"] = version
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()


def signature_name(manifest_name: str) -> str:
    return manifest_name + ".sig"


def skipped_names(manifest_name: str) -> set[str]:
    """What is not a content file of the bundle: the manifest and its signature (written
    after the files), READY (last)."""
    return {manifest_name, signature_name(manifest_name), "READY"}


def settle_signature(
    src: Path, manifest_name: str, raw: bytes | None, data: bytes, sign: Path | None
) -> bytes | None:
    """The ``<manifest>.sig`` to write with the manifest data: a new one with sign, else
    the producer's own when its manifest is kept byte for byte (StageRefused when the
    manifest had to be rewritten: that signature would never verify)."""
    if sign is not None:
        from service.signing import sign_manifest

        return sign_manifest(data, sign)
    path = src / signature_name(manifest_name)
    if not os.path.lexists(path):
        return None
    if data != raw:
        raise StageRefused(
            f"{path} signs a manifest that does not list every file (or "
            f"another version); sign with --sign KEY, or remove it"
        )
    if not path.is_file() or path.is_symlink() or path.stat().st_size > 4096:
        raise StageRefused(f"{path} is not a regular file of at most 4096 bytes")
    return path.read_bytes()


def check_signing_key(path: Path | None) -> None:
    """An unreadable or invalid private key is a ConfigError naming the file (exit 2)."""
    if path is not None:
        from service.signing import load_private_seed

        load_private_seed(path)


def check_staging_free(layout: Layout) -> None:
    if os.path.lexists(layout.ready):
        raise StageRefused(f"a bundle is already staged: {layout.ready} exists")
    if any(layout.staging.iterdir()):
        raise StageRefused(f"{layout.staging} is not empty: a producer may be writing to it")


def stage_bundle(
    src: Path,
    layout: Layout,
    version: str | None,
    progress: ProgressFn | None = None,
    sign: Path | None = None,
) -> Staged:
    """Stage the bundle at src into layout's staging directory; with sign (an Ed25519
    private key in PEM), ``<manifest>.sig`` over the manifest written, before READY."""
    check_signing_key(sign)  # a bad key refuses before anything is copied
    if not src.is_dir():
        raise ConfigError(f"BUNDLE_DIR: {src} is not a directory")
    if not layout.root.is_dir():
        raise ConfigError(
            f"MODELS_ROOT {layout.root} is not a directory (stage never "
            f"creates the volume; is --models-root right?)"
        )
    raw, manifest = read_source_manifest(src, layout.manifest_name)
    if manifest is not None:  # "./a" and "a" name the same file
        files = {PurePosixPath(k).as_posix(): v for k, v in manifest.files.items()}
        manifest = Manifest(manifest.version, files)
    chosen = choose_version(manifest, version)
    tree = scan_source(src, skipped_names(layout.manifest_name))
    check_source(tree, manifest, src)
    layout.staging.mkdir(exist_ok=True)  # a daemon starting now may create it too
    check_staging_free(layout)
    try:
        specs = copy_bundle(src, layout.staging, tree, manifest.files if manifest else {}, progress)
        data = manifest_bytes(raw, manifest, specs, chosen)
        fsops.atomic_write_bytes(layout.staging / layout.manifest_name, data)
        signature = settle_signature(src, layout.manifest_name, raw, data, sign)
        if signature is not None:
            fsops.atomic_write_bytes(
                layout.staging / signature_name(layout.manifest_name), signature
            )
        fsops.atomic_write_bytes(layout.ready, b"")
    except BaseException:
        fsops.empty_dir(layout.staging)  # it was empty: leave nothing half-staged
        raise
    return Staged(len(specs), tree.total_bytes, chosen)
