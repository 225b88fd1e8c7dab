"""``forecaster-sidecar push``: check a bundle as ``stage`` does, then push it to a
registry tag as an OCI artifact (SPEC section 12), optionally signed.

Nothing is written into the bundle directory: the manifest ``stage`` would write (the
producer's bytes when they already list every file) and its signature are pushed as
overrides of the files of the same name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from service.bundle import FileSpec, Manifest, sha256_of
from service.errors import ConfigError
from service.stage import (
    StageRefused,
    check_signing_key,
    check_source,
    choose_version,
    manifest_bytes,
    read_source_manifest,
    scan_source,
    settle_signature,
    signature_name,
    skipped_names,
)

if TYPE_CHECKING:  # the registry client is imported only when a push runs
    from service.oci.push import PushResult


@dataclass(frozen=True)
class Target:
    registry: str
    repository: str
    tag: str


def parse_target(text: str) -> Target:
    """REGISTRY/REPO:TAG (a tag is required: it is what the fleet follows)."""
    from service.oci.reference import parse_reference

    try:
        ref = parse_reference(text, require_scheme=False)
    except ValueError as exc:
        raise ConfigError(f"REGISTRY/REPO:TAG {text[:200]!r}: {exc}") from None
    if ref.tag is None or ref.digest is not None:
        raise ConfigError(f"REGISTRY/REPO:TAG {text[:200]!r}: push needs a :TAG, not a digest")
    return Target(ref.registry, ref.repository, ref.tag)


def settle(src: Path, manifest_name: str, sign: Path | None) -> dict[str, bytes]:
    """The manifest (and signature) to push for the bundle at src, checked as stage
    checks it; StageRefused naming the path when the sidecar would reject it."""
    check_signing_key(sign)
    if not src.is_dir():
        raise ConfigError(f"BUNDLE_DIR: {src} is not a directory")
    raw, manifest = read_source_manifest(src, manifest_name)
    if manifest is not None:
        manifest = Manifest(
            manifest.version, {PurePosixPath(k).as_posix(): v for k, v in manifest.files.items()}
        )
    version = choose_version(manifest, None)
    tree = scan_source(src, skipped_names(manifest_name))
    check_source(tree, manifest, src)
    if tree.links:
        link = sorted(tree.links)[0]
        raise StageRefused(f"{src / link} is a symlink: an OCI layer holds file bytes only")
    specs = _hashed(src, tree.files, manifest.files if manifest else {})
    data = manifest_bytes(raw, manifest, specs, version)
    overrides = {manifest_name: data}
    signature = settle_signature(src, manifest_name, raw, data, sign)
    if signature is not None:
        from service.bundle import parse_manifest
        from service.signing import check_coverage

        check_coverage(src, manifest_name, parse_manifest(data).files)
        overrides[signature_name(manifest_name)] = signature
    return overrides


def _hashed(src: Path, files: dict[str, int], listed: dict[str, FileSpec]) -> dict[str, FileSpec]:
    specs = {}
    for rel, size in files.items():
        digest = sha256_of(src / rel)
        if rel in listed and listed[rel].sha256 != digest:
            raise StageRefused(f"{src / rel} does not match the sha256 its manifest lists")
        specs[rel] = FileSpec(digest, size)
    return specs


def push(
    src: Path,
    target: Target,
    overrides: dict[str, bytes],
    *,
    insecure: frozenset[str],
    auth_file: Path,
    ca_file: Path | None = None,
) -> PushResult:
    """Push the bundle with its settled manifest; RegistryError on a registry failure."""
    from service.oci.client import RegistryClient
    from service.oci.protocol import load_ca_file
    from service.oci.push import push_bundle

    if ca_file is not None:
        load_ca_file(ca_file)  # exit 2 naming it, before anything is uploaded
    client = RegistryClient(
        target.registry,
        target.repository,
        insecure=insecure,
        auth_file=auth_file,
        ca_file=ca_file,
        actions="pull,push",
    )
    return push_bundle(client, target.tag, src, overrides)
