"""An independent verifier of SPEC section 4, used after crashes and races.

It reads the volume with plain os calls and the manifest's checksums; it imports
nothing from service/ so that a bug there cannot hide itself.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def check_current(models: Path) -> str | None:
    """current is absent, or a relative symlink to a complete version; its name."""
    link = models / "current"
    if not os.path.lexists(link):
        return None
    assert link.is_symlink(), "current is not a symlink"
    target = os.readlink(link)
    assert not os.path.isabs(target), f"current target {target} is absolute"
    resolved = Path(os.path.realpath(link))
    assert resolved.parent == Path(os.path.realpath(models / "versions")), resolved
    assert resolved.is_dir(), f"current dangles: {target}"
    check_complete(resolved)
    return resolved.name


def check_complete(version_dir: Path) -> None:
    """Every file listed in the version's manifest exists with the right checksum."""
    path = version_dir / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else {}
    for name, spec in manifest.get("files", {}).items():
        data = (version_dir / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == spec["sha256"], f"{version_dir}/{name}"


def check_no_leftovers(models: Path) -> None:
    """No work dir, journal, temp link or trash content remains after a clean pass."""
    state = models / ".sidecar"
    assert not (state / "work" / "incoming").exists(), "claim left over"
    assert not (state / "intent.json").exists(), "journal left over"
    assert os.listdir(state / "trash") == [], "trash not emptied"
    assert os.listdir(state / "work") == [], f"work dir not clean: {os.listdir(state / 'work')}"
    temps = [n for n in os.listdir(models) if n.startswith(".current.tmp-")]
    assert temps == [], f"temporary links left over: {temps}"


def promoted_counts(models: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    history = models / ".sidecar" / "history.jsonl"
    for line in history.read_text().splitlines() if history.exists() else []:
        event = json.loads(line)
        if event["event"] == "promoted":
            counts[event["version"]] = counts.get(event["version"], 0) + 1
    return counts


def check_exactly_once(models: Path, staged: list[str], keep: int | None = None) -> None:
    """Each staged version is promoted exactly once, or still staged with READY.

    With ``keep`` (KEEP_VERSIONS), only versions older than the newest ``keep`` may
    have been deleted by retention; every other promoted version must be complete.
    """
    counts = promoted_counts(models)
    newest = list(counts)[-keep:] if keep else list(counts)
    staging = models / "staging"
    pending = None
    if (staging / "READY").exists():
        pending = json.loads((staging / "manifest.json").read_text())["version"]
    rejected = os.listdir(models / "rejected")
    assert rejected == [], f"valid bundles were rejected: {rejected}"
    for version in staged:
        if version == pending:
            assert counts.get(version, 0) == 0, f"{version} promoted and still staged"
            continue
        assert counts.get(version) == 1, f"{version} promoted {counts.get(version, 0)} times"
        if version in newest or (models / "versions" / version).exists():
            check_complete(models / "versions" / version)
    assert set(counts) <= set(staged), f"unknown versions promoted: {set(counts) - set(staged)}"
