"""The promotion pass on real directories: publish, switch, history, retention, recovery."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from service import fsops, history, volume
from tests.support import Harness, tree_digest, write_bundle

FILES = {"model.bin": b"weights-1", "sub/config.json": b"{}"}


def test_promotes_a_bundle_into_a_version_with_a_relative_link(
    harness: Callable[..., Harness],
) -> None:
    """A READY bundle becomes versions/<version> and current is a relative link to it."""
    h = harness()
    write_bundle(h.layout.staging, FILES, version="v1")
    staged = tree_digest(h.layout.staging)
    result = h.promoter.run_pass()
    assert (result.outcome, result.version) == ("promoted", "v1")
    assert os.readlink(h.layout.current) == "versions/v1"
    published = tree_digest(h.layout.versions / "v1")
    assert published == {k: v for k, v in staged.items() if k != "READY"}
    assert os.listdir(h.layout.staging) == []
    assert h.value("model_sidecar_promotions_total", outcome="success") == 1
    assert h.value("model_sidecar_current_version_info", version="v1") == 1


def test_without_a_version_the_name_is_a_utc_timestamp_with_suffixes(
    harness: Callable[..., Harness],
) -> None:
    """Unversioned bundles get YYYYMMDDTHHMMSSZ names, -2 on collision."""
    h = harness()
    h.promoter.clock = lambda: 1_800_000_000.0
    for n in range(2):
        write_bundle(h.layout.staging, {"m": str(n).encode()}, manifest=None)
        h.promoter.run_pass()
    assert volume.list_dirs(h.layout.versions) == ["20270115T080000Z", "20270115T080000Z-2"]
    assert os.readlink(h.layout.current) == "versions/20270115T080000Z-2"


def test_nothing_is_touched_while_ready_is_absent(harness: Callable[..., Harness]) -> None:
    """A bundle without READY stays in staging as it is."""
    h = harness()
    write_bundle(h.layout.staging, FILES, ready=False)
    before = tree_digest(h.layout.staging)
    assert h.promoter.run_pass().outcome == "idle"
    assert tree_digest(h.layout.staging) == before
    assert not os.path.lexists(h.layout.current)


def test_history_records_promotions_with_previous(harness: Callable[..., Harness]) -> None:
    """history.jsonl gets one promoted record per promotion, naming the previous version."""
    h = harness()
    for version in ("v1", "v2"):
        write_bundle(h.layout.staging, {"m": version.encode()}, version=version)
        h.promoter.run_pass()
    events = [e for e in history.read(h.layout.history) if e["event"] == "promoted"]
    assert [(e["version"], e.get("previous")) for e in events] == [("v1", None), ("v2", "v1")]
    assert all(e["time"].endswith("Z") and e["duration_seconds"] >= 0 for e in events)


def test_retention_keeps_newest_and_never_current_or_previous(
    harness: Callable[..., Harness],
) -> None:
    """KEEP_VERSIONS newest versions stay; older ones go through the trash."""
    h = harness(keep_versions=2)
    for n in range(1, 6):
        write_bundle(h.layout.staging, {"m": bytes([n])}, version=f"v{n}")
        h.promoter.run_pass()
    assert volume.list_dirs(h.layout.versions) == ["v4", "v5"]
    assert os.listdir(h.layout.trash) == []


def test_retention_protects_the_previous_version_with_keep_one(
    harness: Callable[..., Harness],
) -> None:
    """With KEEP_VERSIONS=1 the previous version is still kept for rollback."""
    h = harness(keep_versions=1)
    for n in range(1, 4):
        write_bundle(h.layout.staging, {"m": bytes([n])}, version=f"v{n}")
        h.promoter.run_pass()
    assert volume.list_dirs(h.layout.versions) == ["v2", "v3"]


def test_legacy_current_directory_is_adopted_without_losing_files(
    harness: Callable[..., Harness],
) -> None:
    """A plain directory at current moves into versions/ and current becomes a link."""
    h = harness()
    h.layout.current.mkdir(parents=True)
    (h.layout.current / "model.bin").write_bytes(b"legacy")
    (h.layout.current / "nested").mkdir()
    (h.layout.current / "nested" / "x").write_bytes(b"x")
    before = tree_digest(h.layout.current)
    h.promoter.run_pass()
    assert h.layout.current.is_symlink()
    (name,) = volume.list_dirs(h.layout.versions)
    assert os.readlink(h.layout.current) == f"versions/{name}"
    assert tree_digest(h.layout.versions / name) == before


def test_interrupted_claim_is_returned_to_staging_and_promoted(
    harness: Callable[..., Harness],
) -> None:
    """Entries left in the work dir by a crash during the claim go back, then promote."""
    h = harness()
    write_bundle(h.layout.staging, FILES, version="v1")
    staged = tree_digest(h.layout.staging)
    volume.ensure_dirs(h.layout)
    h.layout.incoming.mkdir()
    os.rename(h.layout.staging / "model.bin", h.layout.incoming / "model.bin")
    assert h.promoter.run_pass().outcome == "promoted"
    assert tree_digest(h.layout.versions / "v1") == {
        k: v for k, v in staged.items() if k != "READY"
    }
    assert not h.layout.incoming.exists()


def test_journalled_promotion_is_finished_after_a_crash(harness: Callable[..., Harness]) -> None:
    """An intent written before a crash is rolled forward: published, READY gone, switched."""
    h = harness()
    write_bundle(h.layout.staging, FILES, version="v1")
    volume.ensure_dirs(h.layout)
    entries = volume.staged_entries(h.layout)
    ready = volume.ReadyMark.of(h.layout.ready)
    assert ready is not None
    volume.claim(h.layout, entries)
    fsops.atomic_write_json(
        h.layout.intent,
        {
            "action": "promote",
            "name": "v1",
            "previous": None,
            "entries": entries,
            "ready": [ready.inode, ready.mtime_ns],
            "copied": False,
            "time": 0,
            "claimed": 0,
        },
    )
    assert h.promoter.run_pass().outcome == "idle"
    assert os.readlink(h.layout.current) == "versions/v1"
    assert not h.layout.ready.exists() and not h.layout.intent.exists()
    assert [e["event"] for e in history.read(h.layout.history)] == ["promoted"]


def test_roll_forward_never_removes_a_newer_ready(harness: Callable[..., Harness]) -> None:
    """After READY was taken, a producer's new READY survives the roll-forward."""
    h = harness()
    write_bundle(h.layout.staging, FILES, version="v1")
    h.promoter.run_pass()
    write_bundle(h.layout.staging, {"m": b"2"}, version="v2")
    fsops.atomic_write_json(
        h.layout.intent,
        {
            "action": "promote",
            "name": "v1",
            "previous": None,
            "entries": ["model.bin"],
            "ready": [1, 1],
            "copied": False,
            "time": 0,
            "claimed": 0,
        },
    )
    h.promoter.run_pass()
    assert os.readlink(h.layout.current) == "versions/v2"
    promoted = [e["version"] for e in history.read(h.layout.history) if e["event"] == "promoted"]
    assert promoted == ["v1", "v2"]


def test_leftover_temporary_links_are_removed(harness: Callable[..., Harness]) -> None:
    """Temporary links of an interrupted switch do not accumulate."""
    h = harness()
    volume.ensure_dirs(h.layout)
    os.symlink("versions/gone", h.layout.root / ".current.tmp-123-abcd")
    h.promoter.run_pass()
    assert not os.path.lexists(h.layout.root / ".current.tmp-123-abcd")


def test_dangling_current_is_pointed_back_at_the_newest_version(
    harness: Callable[..., Harness],
) -> None:
    """A current that someone replaced with a dangling link is repaired."""
    h = harness()
    write_bundle(h.layout.staging, {"m": b"1"}, version="v1")
    h.promoter.run_pass()
    h.layout.current.unlink()
    os.symlink("versions/nowhere", h.layout.current)
    h.promoter.run_pass()
    assert os.readlink(h.layout.current) == "versions/v1"


def test_io_error_keeps_the_bundle_staged_and_counts_it(harness: Callable[..., Harness]) -> None:
    """A transient OSError (versions/ unusable) leaves READY and the files, counted io_error.

    As root, permissions cannot make a directory unwritable, so versions/ is made a file:
    the rename into it fails with an OSError just as ENOSPC or EACCES would.
    """
    h = harness()
    volume.ensure_dirs(h.layout)
    h.layout.versions.rmdir()
    h.layout.versions.write_text("not a directory")
    write_bundle(h.layout.staging, FILES, version="v1")
    staged = tree_digest(h.layout.staging)
    result = h.promoter.run_pass()
    assert result.outcome == "io_error" and result.failed
    assert tree_digest(h.layout.staging) == staged
    assert h.value("model_sidecar_promotion_failures_total", reason="io_error") >= 1
    h.layout.versions.unlink()
    assert h.promoter.run_pass().outcome == "promoted"
    assert os.readlink(h.layout.current) == "versions/v1"


def test_staging_on_another_filesystem_is_copied(
    harness: Callable[..., Harness], tmp_path: Path
) -> None:
    """With STAGING_DIR on another filesystem (/dev/shm tmpfs) the bundle is copied."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        import pytest

        pytest.skip("no second filesystem (/dev/shm) on this machine")
    staging = Path(os.path.realpath(shm)) / f"staging-{os.getpid()}-{tmp_path.name}"
    try:
        h = harness(staging_dir=staging)
        write_bundle(staging, FILES, version="v1")
        staged = tree_digest(staging)
        assert h.promoter.run_pass().outcome == "promoted"
        assert tree_digest(h.layout.versions / "v1") == {
            k: v for k, v in staged.items() if k != "READY"
        }
        assert os.listdir(staging) == []
    finally:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)


def test_stop_during_a_copy_across_filesystems_leaves_staging_whole(
    harness: Callable[..., Harness], tmp_path: Path
) -> None:
    """A stop during the EXDEV copy of a claim abandons it; staging is as it was."""
    import shutil

    import pytest

    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem (/dev/shm) on this machine")
    staging = Path(os.path.realpath(shm)) / f"staging-stop-{os.getpid()}-{tmp_path.name}"
    try:
        h = harness(staging_dir=staging)
        write_bundle(staging, FILES, version="v1")
        staged = tree_digest(staging)
        h.promoter.progress.stop()
        assert h.promoter.run_pass().outcome == "cancelled"
        assert tree_digest(staging) == staged
        assert not h.layout.incoming.exists()
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def test_pending_reload_survives_in_the_state_dir(
    harness: Callable[..., Harness], reload_server: object
) -> None:
    """A promotion with reloading on leaves reload-pending.json until delivered."""
    h = harness(reload_url="http://127.0.0.1:9/unreachable")
    write_bundle(h.layout.staging, FILES, version="v1")
    result = h.promoter.run_pass()
    assert result.reload_failed
    pending = json.loads(h.layout.pending_reload.read_text())
    assert pending["version"] == "v1" and pending["path"] == str(h.layout.versions / "v1")


def test_roll_forward_never_deletes_the_next_bundle(harness: Callable[..., Harness]) -> None:
    """A journal finished after READY was taken leaves the producer's next bundle alone.

    Regression: the roll-forward deleted staged names of the old bundle, which the next
    bundle (same file names) had already reused.
    """
    h = harness()
    write_bundle(h.layout.staging, FILES, version="v1")
    h.promoter.run_pass()
    write_bundle(h.layout.staging, {"model.bin": b"next"}, version="v2")
    staged = tree_digest(h.layout.staging)
    fsops.atomic_write_json(
        h.layout.intent,
        {
            "action": "promote",
            "name": "v1",
            "previous": None,
            "entries": ["manifest.json", "model.bin"],
            "ready": [1, 1],
            "copied": True,
            "time": 0,
            "claimed": 0,
        },
    )
    h.promoter._recover()
    assert tree_digest(h.layout.staging) == staged


def test_hard_linked_files_are_copied_so_versions_stay_immutable(
    harness: Callable[..., Harness], tmp_path: Path
) -> None:
    """A staged file hard-linked to a file outside is published as a private copy."""
    h = harness()
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"original")
    write_bundle(h.layout.staging, {"other": b"x"}, ready=False, manifest=None)
    os.link(outside, h.layout.staging / "model.bin")
    (h.layout.staging / "READY").write_text("")
    assert h.promoter.run_pass().outcome == "promoted"
    outside.write_bytes(b"changed!")
    assert (h.layout.current / "model.bin").read_bytes() == b"original"
    assert (h.layout.current / "model.bin").stat().st_nlink == 1


# -- damaged state and odd volumes ---------------------------------------------------------


def damaged(h: Harness) -> float:
    return h.value("model_sidecar_promotion_failures_total", reason="state_damaged")


def test_damaged_journal_is_set_aside_and_the_bundle_still_promoted(
    harness: Callable[..., Harness],
) -> None:
    """Garbage in intent.json is kept aside, counted once, and the staged bundle promoted."""
    h = harness()
    volume.ensure_dirs(h.layout)
    h.layout.intent.write_bytes(b"\x00garbage{")
    write_bundle(h.layout.staging, FILES, version="v1")
    assert h.promoter.run_pass().outcome == "promoted"
    assert damaged(h) == 1
    kept = [p.name for p in h.layout.state.iterdir() if p.name.startswith("intent.json.damaged-")]
    assert len(kept) == 1
    assert h.promoter.run_pass().outcome == "idle" and damaged(h) == 1


def test_damaged_pending_reload_is_set_aside_and_counted(
    harness: Callable[..., Harness],
    reload_server: object,
) -> None:
    """A pending reload that is not one is kept aside and counted, not a crash per pass."""
    h = harness(reload_url="http://127.0.0.1:9/reload")
    volume.ensure_dirs(h.layout)
    h.layout.pending_reload.write_text('{"version": "../../etc", "path": 3}')
    assert h.promoter.run_pass().outcome == "idle"
    assert damaged(h) == 1 and not h.layout.pending_reload.exists()


def test_ready_directory_is_taken_and_removed(harness: Callable[..., Harness]) -> None:
    """READY as a directory is treated like the file: promoted, switched, READY gone."""
    h = harness()
    write_bundle(h.layout.staging, FILES, version="v1", ready=False)
    (h.layout.staging / "READY").mkdir()
    (h.layout.staging / "READY" / "inside").write_text("x")
    assert h.promoter.run_pass().outcome == "promoted"
    assert os.readlink(h.layout.current) == "versions/v1"
    assert list(h.layout.staging.iterdir()) == []


def test_dangling_ready_symlink_is_taken(harness: Callable[..., Harness]) -> None:
    """READY as a dangling symlink still marks the bundle ready."""
    h = harness()
    write_bundle(h.layout.staging, FILES, version="v1", ready=False)
    (h.layout.staging / "READY").symlink_to("nowhere")
    assert h.promoter.run_pass().outcome == "promoted"
    assert not os.path.lexists(h.layout.staging / "READY")


def test_stray_file_named_like_the_version_is_moved_aside(
    harness: Callable[..., Harness],
) -> None:
    """A file at versions/v1 is moved to .sidecar/stray/, counted, and v1 is promoted."""
    h = harness()
    volume.ensure_dirs(h.layout)
    (h.layout.versions / "v1").write_text("not a version")
    (h.layout.versions / "v0").symlink_to("/etc")
    write_bundle(h.layout.staging, FILES, version="v1")
    assert h.promoter.run_pass().outcome == "promoted"
    assert damaged(h) == 2
    assert sorted(p.name.split("-")[1] for p in h.layout.stray.iterdir()) == ["v0", "v1"]
    assert (h.layout.current / "model.bin").read_bytes() == FILES["model.bin"]


def test_stop_during_validation_abandons_the_claim(harness: Callable[..., Harness]) -> None:
    """A stop asked during hashing undoes the claim: the bundle stays staged with READY."""
    h = harness()
    write_bundle(h.layout.staging, FILES, version="v1")
    before = tree_digest(h.layout.staging)
    h.promoter.progress.stop()
    assert h.promoter.run_pass().outcome == "cancelled"
    assert tree_digest(h.layout.staging) == before
    assert not h.layout.current.exists() and not h.layout.intent.exists()
    assert h.value("model_sidecar_promotions_total", outcome="error") == 0


def test_rollback_to_a_path_is_refused(harness: Callable[..., Harness]) -> None:
    """rollback '../rejected/x' or '.' is a usage error; current and history unchanged."""
    import pytest

    from service.errors import ConfigError

    h = harness()
    write_bundle(h.layout.staging, FILES, version="v1")
    h.promoter.run_pass()
    before = tree_digest(h.layout.root)
    for target in (".", "..", "../rejected/x", "../../outside", "v1/..", ""):
        with pytest.raises(ConfigError):
            h.promoter.rollback(target or "/", "manual")
    assert tree_digest(h.layout.root) == before
