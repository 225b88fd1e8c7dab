"""``forecaster-sidecar stage``: copy a bundle into staging the way the contract asks.

Files are copied and hashed in one read, fsynced, the manifest (with the sha256 and size
of every file) is written, and READY is created last.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

from service import fsops
from service.bundle import is_valid_version
from service.errors import ConfigError, SidecarError
from service.layout import Layout

CHUNK = 1024 * 1024


class StageRefused(SidecarError):
    reason = "stage"


def copy_hashed(src: Path, dst: Path) -> tuple[str, int]:
    """Copy one file, fsync it; its sha256 and size."""
    digest, size = hashlib.sha256(), 0
    with src.open("rb") as fin, dst.open("xb") as fout:
        while chunk := fin.read(CHUNK):
            digest.update(chunk)
            fout.write(chunk)
            size += len(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    os.chmod(dst, stat.S_IMODE(src.stat().st_mode))
    return digest.hexdigest(), size


def source_manifest(src: Path, name: str) -> dict[str, object]:
    path = src / name
    if not path.exists():
        return {}
    try:
        value = json.loads(path.read_bytes())
    except ValueError as exc:
        raise StageRefused(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise StageRefused(f"{path} is not a JSON object")
    return value


def copy_tree(src: Path, dst: Path, skip: set[str]) -> dict[str, dict[str, object]]:
    """Copy src into dst; the manifest ``files`` map of what was copied."""
    files: dict[str, dict[str, object]] = {}
    for dirpath, dirs, names in os.walk(src):
        rel_dir = Path(dirpath).relative_to(src)
        for name in sorted(dirs):
            (dst / rel_dir / name).mkdir()
        for name in sorted(names):
            rel = (rel_dir / name).as_posix()
            source, target = Path(dirpath, name), dst / rel_dir / name
            if rel in skip:
                continue
            mode = source.lstat().st_mode
            if stat.S_ISLNK(mode):
                os.symlink(os.readlink(source), target)
            elif stat.S_ISREG(mode):
                sha, size = copy_hashed(source, target)
                files[rel] = {"sha256": sha, "size": size}
            else:
                raise StageRefused(f"{source} is not a regular file, directory or symlink")
        fsops.fsync_dir(dst / rel_dir)
    return files


def check_staging_free(layout: Layout) -> None:
    if layout.ready.exists():
        raise StageRefused(f"a bundle is already staged: {layout.ready} exists")
    if any(layout.staging.iterdir()):
        raise StageRefused(f"{layout.staging} is not empty: a producer may be writing to it")


def stage_bundle(src: Path, layout: Layout, version: str | None) -> dict[str, object]:
    """Stage the bundle at src; the manifest written."""
    if not src.is_dir():
        raise ConfigError(f"BUNDLE_DIR: {src} is not a directory")
    if version is not None and not is_valid_version(version):
        raise ConfigError(f"--version: {version!r} is not a valid version name")
    layout.staging.mkdir(parents=True, exist_ok=True)
    check_staging_free(layout)
    manifest = source_manifest(src, layout.manifest_name)
    try:
        manifest["files"] = copy_tree(src, layout.staging, {layout.manifest_name, "READY"})
    except BaseException:
        fsops.empty_dir(layout.staging)  # it was empty: leave nothing half-staged
        raise
    if version is not None:
        manifest["version"] = version
    fsops.atomic_write_json(layout.staging / layout.manifest_name, manifest)
    fsops.atomic_write_bytes(layout.ready, b"")
    return manifest
