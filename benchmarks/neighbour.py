"""Promotion time beside a noisy neighbour on the same filesystem (issue 10).

    uv run python -m benchmarks.neighbour                 # sync_tree, quiet and noisy
    uv run python -m benchmarks.neighbour --syncfs        # and the old syncfs, same run
    uv run python -m benchmarks.neighbour --unsynced      # the producer did not fsync

A 1 MiB bundle is promoted by the real Promoter (one pass, timed) several times on a
quiet filesystem, then while a neighbour process keeps rewriting a file of a few GiB
without ever syncing it, as another pod on the node's root filesystem may. Before each
noisy promotion the benchmark waits until the kernel holds at least --min-dirty-mib of
dirty pages, so that every mode meets the same load (syncfs cleans them all). The
neighbour's file is removed at the end. Figures: medians; the ratio noisy / quiet.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from benchmarks.run import RESULTS, promoter_for
from service import fsops
from service.jobs.promote import Promoter

MIB = 1024 * 1024

NEIGHBOUR = """
import os, sys
path, size = sys.argv[1], int(sys.argv[2])
block = os.urandom(1 << 20)
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
while True:  # rewrite the same size again and again, never syncing
    for _ in range(size >> 20):
        os.write(fd, block)
    os.lseek(fd, 0, os.SEEK_SET)
"""


def write_bundle(staging: Path, files: int, sync: bool) -> None:
    """1 MiB in ``files`` files, a manifest and READY, as a producer writes them."""
    staging.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        fd = os.open(staging / f"part-{i:03d}.bin", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, os.urandom(MIB // files))
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
    (staging / "manifest.json").write_text(json.dumps({"files": {}}))
    if sync:
        fsops.fsync_dir(staging)
    (staging / "READY").write_text("")


def dirty_mib() -> float:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("Dirty:"):
                return int(line.split()[1]) / 1024
    return 0.0


def syncfs_tree(root: Path, also: Iterable[Path] = (), **_: Any) -> None:
    """The old way, for the baseline: one syncfs(2) of root's whole filesystem."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if ctypes.CDLL(None, use_errno=True).syncfs(fd) != 0:
            raise OSError(ctypes.get_errno(), "syncfs failed", str(root))
    finally:
        os.close(fd)


@contextlib.contextmanager
def sync_mode(mode: str, sync_times: list[float]) -> Iterator[None]:
    """Promote with sync_tree (the code as it is) or with the old syncfs patched in; the
    time spent in it is appended to sync_times."""
    original = fsops.sync_tree
    chosen = syncfs_tree if mode == "syncfs" else original

    def timed(*args: Any, **kwargs: Any) -> None:
        start = time.perf_counter()
        try:
            chosen(*args, **kwargs)
        finally:
            sync_times.append(time.perf_counter() - start)

    fsops.sync_tree = timed
    try:
        yield
    finally:
        fsops.sync_tree = original


def promote_once(promoter: Promoter, root: Path, files: int, sync: bool) -> float:
    write_bundle(root / "staging", files, sync)
    start = time.perf_counter()
    result = promoter.run_pass(wait=True)
    elapsed = time.perf_counter() - start
    assert result.outcome == "promoted", result
    return elapsed


def wait_dirty(minimum: float, deadline: float = 120) -> float:
    end = time.monotonic() + deadline
    while (dirty := dirty_mib()) < minimum:
        if time.monotonic() > end:
            raise RuntimeError(f"the neighbour made only {dirty:.0f} MiB dirty")
        time.sleep(0.05)
    return dirty


@contextlib.contextmanager
def neighbour(directory: Path, size: int) -> Iterator[None]:
    path = directory / "neighbour.bin"
    proc = subprocess.Popen([sys.executable, "-c", NEIGHBOUR, str(path), str(size)])
    try:
        yield
    finally:
        proc.kill()
        proc.wait()
        path.unlink(missing_ok=True)


def measure(args: argparse.Namespace, modes: list[str]) -> dict[str, Any]:
    sync = not args.unsynced
    keys = ("quiet", "noisy", "quiet_sync", "noisy_sync", "dirty_mib")
    out: dict[str, Any] = {mode: {key: [] for key in keys} for mode in modes}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp) / "models"
        promoter = promoter_for(root)
        promote_once(promoter, root, args.files, sync)  # warm-up: layout, imports
        os.sync()
        for mode in modes:
            with sync_mode(mode, out[mode]["quiet_sync"]):
                out[mode]["quiet"] = [
                    promote_once(promoter, root, args.files, sync) for _ in range(args.runs)
                ]
        with neighbour(Path(tmp), args.neighbour_gib * 1024 * MIB):
            for mode in modes:
                with sync_mode(mode, out[mode]["noisy_sync"]):
                    for _ in range(args.runs):
                        out[mode]["dirty_mib"].append(wait_dirty(args.min_dirty_mib))
                        out[mode]["noisy"].append(promote_once(promoter, root, args.files, sync))
    return out


def summarise(raw: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for mode, runs in raw.items():
        row = {key: statistics.median(values) for key, values in runs.items()}
        rows.append(
            {
                "mode": mode,
                "quiet_ms": row["quiet"] * 1000,
                "noisy_ms": row["noisy"] * 1000,
                "ratio": row["noisy"] / row["quiet"],
                "quiet_sync_ms": row["quiet_sync"] * 1000,
                "noisy_sync_ms": row["noisy_sync"] * 1000,
                "sync_ratio": row["noisy_sync"] / row["quiet_sync"],
                "dirty_mib": row["dirty_mib"],
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="promotions per figure (>= 5)")
    parser.add_argument("--files", type=int, default=16, help="files in the 1 MiB bundle")
    parser.add_argument("--neighbour-gib", type=int, default=3)
    parser.add_argument("--min-dirty-mib", type=float, default=1024)
    parser.add_argument("--syncfs", action="store_true", help="also the old syncfs baseline")
    parser.add_argument("--unsynced", action="store_true", help="producer does not fsync")
    parser.add_argument(
        "--dir",
        default=os.environ.get("BENCH_DIR"),
        help="where the volume is made (default: the temp dir)",
    )
    args = parser.parse_args(argv)
    if args.runs < 5:
        parser.error("--runs must be at least 5 (the figures are medians)")
    modes = ["sync_tree", "syncfs"] if args.syncfs else ["sync_tree"]
    raw = measure(args, modes)
    rows = summarise(raw)
    print(
        f"1 MiB / {args.files} files, producer {'un' if args.unsynced else ''}synced, "
        f"neighbour rewriting {args.neighbour_gib} GiB, medians of {args.runs}"
    )
    print(f"{'':<10} {'--- whole promotion pass ---':>30}   {'--- the sync step alone ---':>30}")
    print(
        f"{'mode':<10} {'quiet':>10} {'neighbour':>10} {'ratio':>7}   {'quiet':>10} "
        f"{'neighbour':>10} {'ratio':>7} {'dirty':>10}"
    )
    for row in rows:
        print(
            f"{row['mode']:<10} {row['quiet_ms']:>8.1f}ms {row['noisy_ms']:>8.1f}ms "
            f"{row['ratio']:>6.1f}x   {row['quiet_sync_ms']:>8.1f}ms "
            f"{row['noisy_sync_ms']:>8.1f}ms {row['sync_ratio']:>6.1f}x "
            f"{row['dirty_mib']:>7.0f}MiB"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "neighbour.json").write_text(json.dumps({"rows": rows, "raw": raw}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
