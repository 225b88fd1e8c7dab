"""Figures for the core: idle RSS of the daemon, and the wall time of promoting a
1 GiB bundle of 1,000 files with and without checksums in the manifest.

    uv run python -m benchmarks.core [--idle-seconds 60] [--runs 3] [--size-mib 1024]

Prints a table and writes benchmarks/results/core.json. Talks only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from service.config import Config
from service.jobs.promote import Promoter
from service.metrics import Metrics
from service.reload import Reloader

RESULTS = Path(__file__).parent / "results"


def vmrss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def idle_rss(seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MODELS_ROOT": tmp, "RELOAD_URL": "", "METRICS_ADDR": "127.0.0.1",
               "METRICS_PORT": "0", "LOG_FORMAT": "json"}
        proc = subprocess.Popen([sys.executable, "-m", "service", "--poll-interval", "1"],
                                env=env, stderr=subprocess.DEVNULL)
        try:
            time.sleep(seconds)
            rss = vmrss_kib(proc.pid)
            cpu = sum(int(x) for x in Path(f"/proc/{proc.pid}/stat").read_text()
                      .rsplit(")", 1)[1].split()[11:13]) / os.sysconf("SC_CLK_TCK")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    return {"idle_rss_mib": rss / 1024, "cpu_seconds": cpu, "idle_seconds": seconds}


def make_bundle(staging: Path, total: int, count: int, checksums: bool) -> None:
    """1,000 files of random-looking data, synced as a careful producer does."""
    staging.mkdir(parents=True)
    size = total // count
    block = os.urandom(size)
    files = {}
    for i in range(count):
        name = f"part-{i:05d}.bin"
        data = i.to_bytes(8, "big") + block[8:]
        fd = os.open(staging / name, os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        if checksums:
            files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": size}
    (staging / "manifest.json").write_text(json.dumps({"files": files}))
    (staging / "READY").write_text("")
    os.sync()


def promote_once(total: int, count: int, checksums: bool) -> float:
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        root = Path(tmp)
        make_bundle(root / "staging", total, count, checksums)
        config = Config(models_root=root, staging_dir=root / "staging",
                        current_link=root / "current", reload_url=None, watch=False)
        promoter = Promoter(config, Metrics(CollectorRegistry()), Reloader(config))
        start = time.perf_counter()
        result = promoter.run_pass(wait=True)
        elapsed = time.perf_counter() - start
        assert result.outcome == "promoted", result
        return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--idle-seconds", type=float, default=60)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--files", type=int, default=1000)
    args = parser.parse_args()
    total = args.size_mib * 1024 * 1024
    figures: dict[str, object] = {"machine": os.uname().machine, "cpus": os.cpu_count()}
    for checksums in (False, True):
        runs = [promote_once(total, args.files, checksums) for _ in range(args.runs)]
        key = "with_checksums" if checksums else "without_checksums"
        figures[key] = {"median_s": statistics.median(runs), "runs_s": runs}
    figures["idle"] = idle_rss(args.idle_seconds)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "core.json").write_text(json.dumps(figures, indent=2))
    print("| figure | value |\n|---|---|")
    label = f"{args.size_mib} MiB / {args.files} files"
    print(f"| promote {label}, no checksums (median of {args.runs}) | "
          f"{figures['without_checksums']['median_s']:.3f} s |")  # type: ignore[index]
    print(f"| promote {label}, sha256 of every file (median of {args.runs}) | "
          f"{figures['with_checksums']['median_s']:.3f} s |")  # type: ignore[index]
    idle = figures["idle"]
    print(f"| idle VmRSS after {idle['idle_seconds']:.0f} s at a 1 s interval | "  # type: ignore[index]
          f"{idle['idle_rss_mib']:.1f} MiB |")  # type: ignore[index]
    print(f"| CPU over that idle time | {idle['cpu_seconds']:.2f} s |")  # type: ignore[index]


if __name__ == "__main__":
    main()
