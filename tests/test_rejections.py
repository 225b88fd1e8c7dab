"""Every rejection reason with a real malformed bundle: counted once, kept, not retried."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from service import history, volume
from tests.support import Harness, sha256, tree_digest, write_bundle

GOOD = {"sha256": sha256(b"data"), "size": 4}


def _fifo(staging: Path) -> None:
    write_bundle(staging, {"model.bin": b"data"}, ready=False)
    os.mkfifo(staging / "pipe")
    (staging / "READY").write_text("")


def _symlink_out(staging: Path) -> None:
    write_bundle(staging, {"model.bin": b"data"}, ready=False)
    os.symlink("/etc/passwd", staging / "passwd")
    (staging / "READY").write_text("")


def _relative_escape(staging: Path) -> None:
    write_bundle(staging, {"model.bin": b"data"}, ready=False)
    os.symlink("../../../outside", staging / "escape")
    (staging / "READY").write_text("")


def _dir_link_escape(staging: Path) -> None:
    write_bundle(staging, {"model.bin": b"data"}, ready=False)
    os.symlink(".", staging / "self")
    os.symlink("self/..", staging / "up")
    (staging / "READY").write_text("")


CASES: dict[str, tuple[str, Callable[[Path], None]]] = {
    "bad json": (
        "manifest_invalid",
        lambda s: write_bundle(s, {"model.bin": b"data"}, manifest=b"{not json"),
    ),
    "manifest is a list": (
        "manifest_invalid",
        lambda s: write_bundle(s, {"model.bin": b"data"}, manifest=[1, 2]),
    ),
    "bad version string": (
        "manifest_invalid",
        lambda s: write_bundle(s, {"model.bin": b"data"}, manifest={"version": "../evil"}),
    ),
    "version not a string": (
        "manifest_invalid",
        lambda s: write_bundle(s, {"model.bin": b"data"}, manifest={"version": 7}),
    ),
    "files not an object": (
        "manifest_invalid",
        lambda s: write_bundle(s, {"model.bin": b"data"}, manifest={"files": ["model.bin"]}),
    ),
    "uppercase sha256": (
        "manifest_invalid",
        lambda s: write_bundle(
            s,
            {"model.bin": b"data"},
            manifest={"files": {"model.bin": {"sha256": GOOD["sha256"].upper()}}},
        ),
    ),
    "size is a bool": (
        "manifest_invalid",
        lambda s: write_bundle(
            s,
            {"model.bin": b"data"},
            manifest={"files": {"model.bin": {"sha256": GOOD["sha256"], "size": True}}},
        ),
    ),
    "wrong checksum": (
        "checksum_mismatch",
        lambda s: write_bundle(
            s,
            {"model.bin": b"data"},
            manifest={"files": {"model.bin": {"sha256": sha256(b"other")}}},
        ),
    ),
    "wrong size": (
        "size_mismatch",
        lambda s: write_bundle(
            s,
            {"model.bin": b"data"},
            manifest={"files": {"model.bin": {"sha256": GOOD["sha256"], "size": 5}}},
        ),
    ),
    "listed file missing": (
        "file_missing",
        lambda s: write_bundle(s, {"model.bin": b"data"}, manifest={"files": {"absent.bin": GOOD}}),
    ),
    "dotdot path": (
        "unsafe_path",
        lambda s: write_bundle(
            s, {"model.bin": b"data"}, manifest={"files": {"../model.bin": GOOD}}
        ),
    ),
    "absolute path": (
        "unsafe_path",
        lambda s: write_bundle(
            s, {"model.bin": b"data"}, manifest={"files": {"/etc/passwd": GOOD}}
        ),
    ),
    "symlink to /etc/passwd": ("unsafe_path", _symlink_out),
    "relative symlink escaping": ("unsafe_path", _relative_escape),
    "symlink via a dir link": ("unsafe_path", _dir_link_escape),
    "fifo": ("unsafe_path", _fifo),
    "READY alone": ("empty_bundle", lambda s: write_bundle(s, {}, manifest=None)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_bundle_is_rejected_with_its_reason(
    case: str, harness: Callable[..., Harness]
) -> None:
    """The bundle moves to rejected/ with REJECTION.json; counted once; current untouched."""
    reason, make = CASES[case]
    h = harness()
    write_bundle(h.layout.staging, {"ok": b"ok"}, version="v0")
    h.promoter.run_pass()
    make(h.layout.staging)
    staged = {k: v for k, v in tree_digest(h.layout.staging).items() if k != "READY"}
    result = h.promoter.run_pass()
    assert (result.outcome, result.failed) == ("rejected", True)
    assert os.readlink(h.layout.current) == "versions/v0"
    (name,) = volume.list_dirs(h.layout.rejected)
    kept = tree_digest(h.layout.rejected / name)
    rejection = json.loads((h.layout.rejected / name / "REJECTION.json").read_text())
    assert rejection["reason"] == reason and rejection["detail"] and rejection["time"]
    assert {k: v for k, v in kept.items() if k != "REJECTION.json"} == staged
    assert os.listdir(h.layout.staging) == []
    h.promoter.run_pass()  # not retried
    assert h.value("model_sidecar_promotion_failures_total", reason=reason) == 1
    assert h.value("model_sidecar_promotions_total", outcome="rejected") == 1
    assert [e["reason"] for e in history.read(h.layout.history) if e["event"] == "rejected"] == [
        reason
    ]


def test_manifest_required_but_missing_is_rejected(harness: Callable[..., Harness]) -> None:
    """With REQUIRE_MANIFEST=true a bundle without a manifest is manifest_missing."""
    h = harness(require_manifest=True)
    write_bundle(h.layout.staging, {"model.bin": b"data"}, manifest=None)
    assert h.promoter.run_pass().outcome == "rejected"
    assert h.value("model_sidecar_promotion_failures_total", reason="manifest_missing") == 1


def test_duplicate_version_is_rejected_and_the_first_kept(
    harness: Callable[..., Harness],
) -> None:
    """A second bundle with an existing version is version_exists; versions/v1 unchanged."""
    h = harness()
    write_bundle(h.layout.staging, {"model.bin": b"one"}, version="v1")
    h.promoter.run_pass()
    first = tree_digest(h.layout.versions / "v1")
    write_bundle(h.layout.staging, {"model.bin": b"two"}, version="v1")
    assert h.promoter.run_pass().outcome == "rejected"
    assert tree_digest(h.layout.versions / "v1") == first
    assert h.value("model_sidecar_promotion_failures_total", reason="version_exists") == 1


def test_internal_relative_symlink_is_allowed(harness: Callable[..., Harness]) -> None:
    """A relative symlink that stays inside the bundle is published as it is."""
    h = harness()
    write_bundle(h.layout.staging, {"weights/model.bin": b"data"}, ready=False)
    os.symlink("weights/model.bin", h.layout.staging / "model.bin")
    (h.layout.staging / "READY").write_text("")
    assert h.promoter.run_pass().outcome == "promoted"
    assert (h.layout.current / "model.bin").read_bytes() == b"data"


def test_bundle_file_named_rejection_json_is_kept(harness: Callable[..., Harness]) -> None:
    """A bundle's own REJECTION.json is renamed, not overwritten, when it is rejected."""
    h = harness()
    write_bundle(h.layout.staging, {"REJECTION.json": b"theirs"}, manifest=b"[]")
    h.promoter.run_pass()
    (name,) = volume.list_dirs(h.layout.rejected)
    kept = sorted(os.listdir(h.layout.rejected / name))
    assert kept[0] == "REJECTION.json" and kept[1].startswith("REJECTION.json.from-bundle-")
    assert (h.layout.rejected / name / kept[1]).read_bytes() == b"theirs"


def test_rejected_bundles_beyond_keep_rejected_are_deleted(
    harness: Callable[..., Harness],
) -> None:
    """Only the newest KEEP_REJECTED rejected bundles are kept."""
    h = harness(keep_rejected=2)
    clock = iter(range(1_800_000_000, 1_800_000_100))
    h.promoter.clock = lambda: float(next(clock))
    for _ in range(4):
        write_bundle(h.layout.staging, {}, manifest=None)
        h.promoter.run_pass()
    assert len(volume.list_dirs(h.layout.rejected)) == 2
