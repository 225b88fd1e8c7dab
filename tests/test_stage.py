"""stage: it verifies what the producer claims, refuses what the sidecar would reject."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.bundle import FileSpec, Manifest
from service.errors import ConfigError
from service.stage import StageRefused, choose_version, manifest_bytes
from tests.support import base_env, run_cli, sha256, tree_digest


def make_bundle(root: Path, files: dict[str, bytes], manifest: object = None) -> Path:
    root.mkdir(parents=True)
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    if manifest is not None:
        (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_wrong_listed_checksum_is_refused_naming_the_file(tmp_path: Path, models: Path) -> None:
    """A producer's sha256 that does not match exits 1 naming the file; staging stays empty."""
    src = make_bundle(
        tmp_path / "b",
        {"model.bin": b"real"},
        {"files": {"model.bin": {"sha256": sha256(b"claimed")}}},
    )
    out = run_cli("stage", str(src), env=base_env(models))
    assert out.returncode == 1 and "model.bin" in out.stderr and "sha256" in out.stderr
    assert list((models / "staging").iterdir()) == []


def test_wrong_listed_size_is_refused_naming_the_file(tmp_path: Path, models: Path) -> None:
    """A producer's size that does not match exits 1 naming the file, nothing copied."""
    src = make_bundle(
        tmp_path / "b",
        {"model.bin": b"real"},
        {"files": {"model.bin": {"sha256": sha256(b"real"), "size": 5}}},
    )
    out = run_cli("stage", str(src), env=base_env(models))
    assert out.returncode == 1 and "model.bin" in out.stderr and "bytes" in out.stderr
    assert not (models / "staging").exists() or list((models / "staging").iterdir()) == []


def test_listed_file_missing_is_refused(tmp_path: Path, models: Path) -> None:
    """A file the producer's manifest lists but the bundle lacks exits 1 naming it."""
    src = make_bundle(
        tmp_path / "b", {"model.bin": b"x"}, {"files": {"gone.bin": {"sha256": sha256(b"x")}}}
    )
    out = run_cli("stage", str(src), env=base_env(models))
    assert out.returncode == 1 and "gone.bin" in out.stderr


@pytest.mark.parametrize("files", [{}, {"sub/.keep-dir-only": None}])
def test_empty_bundle_is_refused(tmp_path: Path, models: Path, files: dict[str, None]) -> None:
    """A bundle with no file besides its manifest exits 1: nothing to stage."""
    src = make_bundle(tmp_path / "b", {}, {"version": "v1"})
    (src / "sub").mkdir()
    out = run_cli("stage", str(src), env=base_env(models))
    assert out.returncode == 1 and "no file" in out.stderr


def test_version_contradicting_the_manifest_is_refused(tmp_path: Path, models: Path) -> None:
    """--version v2 for a bundle whose manifest says v1 exits 1 naming both."""
    src = make_bundle(tmp_path / "b", {"m": b"x"}, {"version": "v1"})
    out = run_cli("stage", str(src), "--version", "v2", env=base_env(models))
    assert out.returncode == 1 and "v1" in out.stderr and "v2" in out.stderr


def test_unsafe_link_is_refused_before_copying(tmp_path: Path, models: Path) -> None:
    """A bundle whose link leaves it exits 1; nothing reaches staging."""
    src = make_bundle(tmp_path / "b", {"m": b"x"})
    (src / "out").symlink_to("../../etc/passwd")
    out = run_cli("stage", str(src), env=base_env(models))
    assert out.returncode == 1 and "outside the bundle" in out.stderr


def test_stage_never_creates_the_volume(tmp_path: Path) -> None:
    """stage with a missing MODELS_ROOT exits 2 naming it and creates nothing."""
    src = make_bundle(tmp_path / "b", {"m": b"x"})
    root = tmp_path / "no-volume"
    out = run_cli("stage", str(src), env=base_env(root))
    assert out.returncode == 2 and str(root) in out.stderr
    assert not root.exists()


def test_complete_manifest_is_staged_byte_for_byte(tmp_path: Path, models: Path) -> None:
    """A producer manifest that lists every file is kept as is (a signature stays valid)."""
    manifest = {
        "version": "v1",
        "files": {"m": {"sha256": sha256(b"x"), "size": 1}},
        "extra": [1, 2],
    }
    src = make_bundle(tmp_path / "b", {"m": b"x"}, manifest)
    out = run_cli("stage", str(src), env=base_env(models))
    assert out.returncode == 0, out.stderr
    assert (models / "staging/manifest.json").read_bytes() == (src / "manifest.json").read_bytes()


def test_refused_stage_leaves_a_staged_bundle_alone(tmp_path: Path, models: Path) -> None:
    """A refused stage (bad checksum) with a bundle already staged changes nothing."""
    good = make_bundle(tmp_path / "good", {"m": b"x"})
    bad = make_bundle(tmp_path / "bad", {"m": b"y"}, {"files": {"m": {"sha256": sha256(b"z")}}})
    env = base_env(models)
    assert run_cli("stage", str(good), env=env).returncode == 0
    before = tree_digest(models)
    assert run_cli("stage", str(bad), env=env).returncode == 1
    assert tree_digest(models) == before


names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)


@given(listed=st.none() | names, requested=st.none() | names)
def test_version_choice(listed: str | None, requested: str | None) -> None:
    """--version fills in a missing version, agrees with an equal one, else is refused."""
    manifest = Manifest(listed, {})
    if listed is not None and requested is not None and listed != requested:
        with pytest.raises(StageRefused):
            choose_version(manifest, requested)
    else:
        assert choose_version(manifest, requested) == (requested or listed)


def test_invalid_version_argument_is_a_usage_error() -> None:
    """--version with a path in it is a configuration error (exit 2)."""
    with pytest.raises(ConfigError):
        choose_version(None, "../x")


def test_incomplete_manifest_gains_the_missing_files_and_keeps_other_keys() -> None:
    """A manifest listing some files is completed; the producer's entries and keys stay."""
    raw = json.dumps({"files": {"a": {"sha256": "0" * 64}}, "note": "hi"}).encode()
    manifest = Manifest(None, {"a": FileSpec("0" * 64)})
    specs = {"a": FileSpec("0" * 64, 1), "b": FileSpec("1" * 64, 2)}
    out = json.loads(manifest_bytes(raw, manifest, specs, "v3"))
    assert out["files"] == {"a": {"sha256": "0" * 64}, "b": {"sha256": "1" * 64, "size": 2}}
    assert out["note"] == "hi" and out["version"] == "v3"
