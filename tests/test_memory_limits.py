"""Memory is bounded by design: the real sidecar at the documented manifest limits.

SPEC section 3: at the limits the implementation documents (entries, path length,
depth; a manifest of at most 32 MiB) the process's peak RSS stays <= 64 MiB, and a
bundle beyond them is refused before it costs the memory. Each case runs the real
``forecaster-sidecar --once`` in its own process and reads its peak RSS (ru_maxrss of
that child alone).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from service.manifest_reader import DEFAULT_LIMITS
from tests.support import ROOT, base_env

PEAK_LIMIT_KIB = 64 * 1024
PAD = "x" * 1024


def peak_of_once(models: Path) -> tuple[int, str]:
    """Run one pass in a child of a small wrapper; the child's peak RSS (KiB) and stderr."""
    wrapper = (
        "import resource, subprocess, sys\n"
        "out = subprocess.run([sys.executable, '-m', 'service', '--once'], "
        "capture_output=True, text=True)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.stderr.write(out.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", wrapper],
        env=base_env(models),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return int(done.stdout.strip()), done.stderr


def write_manifest(staging: Path, files: dict[str, str], padding: int = 0) -> None:
    document = {"version": "v1", "files": {p: {"sha256": h} for p, h in files.items()}}
    text = json.dumps(document)
    if padding:  # an ignored key, as a forward-compatible producer may send
        text = text[:-1] + ', "notes": "' + "n" * padding + '"}'
    (staging / "manifest.json").write_text(text)
    (staging / "READY").write_text("")


@pytest.mark.slow
def test_manifest_at_the_entry_and_path_limits_promotes_within_64_mib(models: Path) -> None:
    """The most entries, each with a long deep path, padded to 32 MiB: promoted, <= 64 MiB."""
    staging = models / "staging"
    parts = ["d" * 200] * 4  # 4 x 200 bytes of directories, then the file name
    base = staging.joinpath(*parts)
    base.mkdir(parents=True)
    files = {}
    data = b"w"
    digest = hashlib.sha256(data).hexdigest()
    for i in range(DEFAULT_LIMITS.max_entries):
        name = f"{i:05d}-" + "f" * 180
        (base / name).write_bytes(data)
        files["/".join([*parts, name])] = digest
    size_so_far = len(json.dumps({"files": {p: {"sha256": digest} for p in files}}))
    write_manifest(staging, files, padding=DEFAULT_LIMITS.max_bytes - size_so_far - 200)
    assert (staging / "manifest.json").stat().st_size <= DEFAULT_LIMITS.max_bytes
    peak, stderr = peak_of_once(models)
    assert (models / "current").resolve().name == "v1", stderr[-2000:]
    print(f"peak RSS at the entry and path limits: {peak / 1024:.1f} MiB")
    assert peak <= PEAK_LIMIT_KIB


@pytest.mark.slow
def test_manifest_far_beyond_the_entry_limit_is_refused_within_64_mib(models: Path) -> None:
    """A 32 MiB manifest listing 200,000 files is manifest_invalid, decided cheaply."""
    staging = models / "staging"
    staging.mkdir()
    (staging / "model.bin").write_bytes(b"w")
    digest = hashlib.sha256(b"w").hexdigest()
    write_manifest(staging, {f"f{i:06d}": digest for i in range(200_000)})
    peak, stderr = peak_of_once(models)
    rejected = list((models / "rejected").iterdir())
    assert len(rejected) == 1, stderr[-2000:]
    record = json.loads((rejected[0] / "REJECTION.json").read_text())
    assert record["reason"] == "manifest_invalid"
    print(f"peak RSS refusing 200,000 entries: {peak / 1024:.1f} MiB")
    assert peak <= PEAK_LIMIT_KIB


@pytest.mark.slow
def test_manifest_of_32_mib_whitespace_and_one_file_stays_within_64_mib(models: Path) -> None:
    """A manifest at the byte cap made of whitespace around a valid object: <= 64 MiB."""
    staging = models / "staging"
    staging.mkdir()
    (staging / "model.bin").write_bytes(b"w")
    body = json.dumps(
        {"version": "v1", "files": {"model.bin": {"sha256": hashlib.sha256(b"w").hexdigest()}}}
    )
    pad = DEFAULT_LIMITS.max_bytes - len(body)
    (staging / "manifest.json").write_text(" " * (pad // 2) + body + " " * (pad - pad // 2))
    (staging / "READY").write_text("")
    peak, stderr = peak_of_once(models)
    assert (models / "current").resolve().name == "v1", stderr[-2000:]
    print(f"peak RSS with a 32 MiB manifest: {peak / 1024:.1f} MiB")
    assert peak <= PEAK_LIMIT_KIB
