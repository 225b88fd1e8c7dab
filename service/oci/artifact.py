"""The shape of a model bundle as an OCI artifact: pure functions, no I/O.

One layer per file of the bundle (the manifest and its signature included), the raw
bytes of the file (no tar), annotated ``org.opencontainers.image.title`` with the
file's relative POSIX path. The config is a small JSON blob; ``artifactType`` and the
config's media type both name the artifact kind, so registries that predate
``artifactType`` (distribution 2.8) still show what it is.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

from service.oci.protocol import OCI_MANIFEST, Descriptor, RegistryError, sha256_digest
from service.oci.reference import DIGEST_RE

ARTIFACT_TYPE = "application/vnd.forecaster.bundle.v1"
CONFIG_MEDIA_TYPE = "application/vnd.forecaster.bundle.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.forecaster.bundle.file.v1"
TITLE = "org.opencontainers.image.title"
CONFIG_BYTES = b"{}"
MAX_LAYERS = 100_000
MAX_PATH = 4096
MAX_NAME = 255  # one path component, as Linux filesystems allow


@dataclass(frozen=True)
class Layer:
    """One file of the bundle: its relative path and its blob."""

    path: str
    digest: str
    size: int

    def descriptor(self) -> Descriptor:
        return Descriptor(LAYER_MEDIA_TYPE, self.digest, self.size, {TITLE: self.path})


def config_descriptor() -> Descriptor:
    return Descriptor(CONFIG_MEDIA_TYPE, sha256_digest(CONFIG_BYTES), len(CONFIG_BYTES))


def _descriptor_json(d: Descriptor) -> dict[str, object]:
    value: dict[str, object] = {"mediaType": d.media_type, "digest": d.digest, "size": d.size}
    if d.annotations:
        value["annotations"] = dict(d.annotations)
    return value


def build_manifest(layers: Iterable[Layer], annotations: dict[str, str] | None = None) -> bytes:
    """The OCI image manifest of a bundle (layers sorted by path: the same bundle gives
    the same digest)."""
    value: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": _descriptor_json(config_descriptor()),
        "layers": [
            _descriptor_json(layer.descriptor()) for layer in sorted(layers, key=lambda la: la.path)
        ],
    }
    if annotations:
        value["annotations"] = annotations
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _invalid(detail: str) -> RegistryError:
    # The fixed pull failure reasons have no "invalid artifact": the artifact is not
    # what its digest was published as (a bundle), which is what digest_mismatch counts.
    return RegistryError("digest_mismatch", f"not a bundle artifact: {detail}")


def safe_title(raw: object) -> str:
    """A layer title that is a safe relative path inside the bundle, normalised."""
    if not isinstance(raw, str) or not raw or len(raw) > MAX_PATH or "\x00" in raw:
        raise _invalid(f"layer title {raw!r} is not a path")
    path = PurePosixPath(raw)
    if path.is_absolute() or ".." in path.parts:
        raise _invalid(f"layer title {raw!r} leaves the bundle")
    if any(len(part.encode()) > MAX_NAME for part in path.parts):
        raise _invalid(f"layer title {raw[:80]!r}… has a name over {MAX_NAME} bytes")
    normal = path.as_posix()
    if normal in (".", "READY") or "\\" in normal:
        raise _invalid(f"layer title {raw!r} is not allowed")
    return normal


def _layer(raw: object) -> Layer:
    if not isinstance(raw, dict) or raw.get("mediaType") != LAYER_MEDIA_TYPE:
        raise _invalid(f"a layer is not a {LAYER_MEDIA_TYPE}")
    digest, size = raw.get("digest"), raw.get("size")
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
        raise _invalid("a layer has no sha256 digest")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise _invalid(f"layer {digest} has no size")
    annotations = raw.get("annotations")
    title = annotations.get(TITLE) if isinstance(annotations, dict) else None
    return Layer(safe_title(title), digest, size)


def parse_manifest(data: bytes) -> list[Layer]:
    """The layers of a verified manifest; every path distinct, none inside another."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        raise _invalid("the manifest is not JSON") from None
    layers = value.get("layers") if isinstance(value, dict) else None
    if not isinstance(layers, list) or not layers or len(layers) > MAX_LAYERS:
        raise _invalid("the manifest has no layers list (or more than 100,000)")
    parsed = [_layer(raw) for raw in layers]
    paths = {layer.path for layer in parsed}
    if len(paths) != len(parsed):
        raise _invalid("two layers have the same title")
    for layer in parsed:
        for parent in PurePosixPath(layer.path).parents:
            if parent.as_posix() in paths:
                raise _invalid(f"{layer.path!r} is inside the file {parent.as_posix()!r}")
    return parsed
