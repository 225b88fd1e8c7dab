"""Push a bundle directory as an OCI artifact: one layer per file, blobs uploaded once.

The caller (``forecaster-sidecar push``) checks the bundle as ``stage`` does and passes
the manifest (and signature) it settled on as ``overrides``: their bytes are pushed
instead of (or in addition to) the files of the same name, so nothing is written into
the user's bundle directory.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from service.errors import SidecarError
from service.oci.artifact import CONFIG_BYTES, Layer, build_manifest, config_descriptor
from service.oci.client import RegistryClient

CHUNK = 1024 * 1024
SKIPPED = frozenset({"READY"})


class PushRefused(SidecarError):
    """The bundle directory cannot be pushed as it is; the message names the path."""

    reason = "push"


@dataclass(frozen=True)
class PushResult:
    digest: str
    layers: int
    uploaded: int
    skipped: int


def _hash_file(path: Path) -> tuple[str, int]:
    with path.open("rb") as fh:
        digest = hashlib.file_digest(fh, "sha256")
    return "sha256:" + digest.hexdigest(), path.stat().st_size


def bundle_files(root: Path) -> dict[str, Path]:
    """Relative POSIX path -> file, for every regular file under root (READY skipped)."""
    if not root.is_dir():
        raise PushRefused(f"BUNDLE_DIR: {root} is not a directory")
    found: dict[str, Path] = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            mode = path.lstat().st_mode
            if not stat.S_ISREG(mode):
                raise PushRefused(
                    f"{path} is not a regular file: an OCI layer holds file bytes only"
                )
            if rel not in SKIPPED:
                found[rel] = path
    return found


def plan_layers(
    files: Mapping[str, Path],
    overrides: Mapping[str, bytes],
) -> tuple[list[Layer], dict[str, Path | bytes]]:
    """The layers, and where each digest's bytes come from."""
    layers: list[Layer] = []
    sources: dict[str, Path | bytes] = {}
    for rel, path in files.items():
        if rel not in overrides:
            digest, size = _hash_file(path)
            layers.append(Layer(rel, digest, size))
            sources[digest] = path
    for rel, data in overrides.items():
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        layers.append(Layer(rel, digest, len(data)))
        sources[digest] = data
    if not layers:
        raise PushRefused("the bundle has no file to push")
    return layers, sources


def _upload(client: RegistryClient, digest: str, size: int, source: Path | bytes) -> None:
    if isinstance(source, bytes):
        client.upload_blob(digest, size, io.BytesIO(source))
        return
    with source.open("rb") as fh:
        client.upload_blob(digest, size, fh)


def push_bundle(
    client: RegistryClient, tag: str, root: Path, overrides: Mapping[str, bytes] | None = None
) -> PushResult:
    """Push root's files (and overrides) under tag; the manifest digest and counts."""
    layers, sources = plan_layers(bundle_files(root), overrides or {})
    sizes = {layer.digest: layer.size for layer in layers}
    uploaded = skipped = 0
    for digest, source in sources.items():
        if client.blob_exists(digest):
            skipped += 1
            continue
        _upload(client, digest, sizes[digest], source)
        uploaded += 1
    config = config_descriptor()
    if not client.blob_exists(config.digest):
        client.upload_blob(config.digest, config.size, io.BytesIO(CONFIG_BYTES))
    digest = client.put_manifest(tag, build_manifest(layers))
    return PushResult(digest, len(layers), uploaded, skipped)


def retag(client: RegistryClient, source: str, tag: str) -> str:
    """Point tag at the manifest source (a tag or digest) names: a ring's promotion
    (``canary`` -> ``stable``) without uploading anything; the digest, verified."""
    digest = client.head_manifest(source).digest
    data = client.get_manifest(digest)
    return client.put_manifest(tag, data)
