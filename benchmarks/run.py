"""All benchmarks of forecaster-sidecar in one command; prints a table, writes JSON.

    uv run python -m benchmarks.run            # full: medians of 5 runs
    uv run python -m benchmarks.run --quick    # 3 runs, shorter idle windows

Each figure is a median of several runs, and each baseline is measured in the same run
as the figure it is compared with. Everything talks only to 127.0.0.1. Results:
benchmarks/results/results.json (git-ignored); docs/performance.md has a copy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from service.bundle import check_files, parse_manifest
from service.config import Config
from service.jobs.promote import Promoter
from service.metrics import Metrics
from service.reload import Reloader

RESULTS = Path(__file__).parent / "results"
MIB = 1024 * 1024
Rows = list[dict[str, Any]]


# -- helpers ---------------------------------------------------------------------------


def median_of(runs: int, measure: Callable[[], float]) -> dict[str, Any]:
    values = [measure() for _ in range(runs)]
    return {"median": statistics.median(values), "runs": values}


def write_file(path: Path, data: bytes, sync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def make_bundle(staging: Path, total: int, count: int, checksums: bool, sync: bool) -> None:
    """count files of total/count bytes; synced before READY as a careful producer does."""
    staging.mkdir(parents=True, exist_ok=True)
    size = max(total // count, 8)
    block = os.urandom(size)
    files = {}
    for i in range(count):
        name = f"d{i % 16:02d}/part-{i:05d}.bin"
        (staging / name).parent.mkdir(exist_ok=True)
        data = i.to_bytes(8, "big") + block[8:]
        write_file(staging / name, data, sync)
        if checksums:
            files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": size}
    (staging / "manifest.json").write_text(json.dumps({"files": files}))
    if sync:
        os.sync()
    (staging / "READY").write_text("")


def promoter_for(root: Path) -> Promoter:
    config = Config(
        models_root=root,
        staging_dir=root / "staging",
        current_link=root / "current",
        reload_url=None,
        watch=False,
    )
    return Promoter(config, Metrics(CollectorRegistry()), Reloader(config))


def time_promotion(total: int, count: int, checksums: bool, sync: bool = True) -> float:
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        root = Path(tmp)
        make_bundle(root / "staging", total, count, checksums, sync)
        promoter = promoter_for(root)
        start = time.perf_counter()
        result = promoter.run_pass(wait=True)
        elapsed = time.perf_counter() - start
        assert result.outcome == "promoted", result
        return elapsed


def time_cp_baseline(total: int, count: int) -> float:
    """What a shell sidecar does: cp -a staging/. versions/x && ln -sfn."""
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        root = Path(tmp)
        make_bundle(root / "staging", total, count, checksums=False, sync=True)
        (root / "versions").mkdir()
        start = time.perf_counter()
        subprocess.run(
            ["sh", "-c", "cp -a staging/. versions/x && ln -sfn versions/x current"],
            cwd=root,
            check=True,
        )
        return time.perf_counter() - start


# -- 1. promotion wall time ----------------------------------------------------------------


SHAPES = [
    (1 * MIB, 1000),
    (100 * MIB, 1000),
    (1024 * MIB, 1000),
    (100 * MIB, 10),
    (100 * MIB, 10000),
]


def bench_promotion(runs: int, shapes: list[tuple[int, int]]) -> Rows:
    rows = []
    for total, count in shapes:
        cp = median_of(runs, lambda t=total, c=count: time_cp_baseline(t, c))
        plain = median_of(runs, lambda t=total, c=count: time_promotion(t, c, False))
        checked = median_of(runs, lambda t=total, c=count: time_promotion(t, c, True))
        rows.append(
            {
                "bundle": f"{total // MIB} MiB / {count} files",
                "cp_s": cp["median"],
                "promote_s": plain["median"],
                "promote_checksums_s": checked["median"],
                "speedup_vs_cp": cp["median"] / plain["median"],
            }
        )
    total, count = 1024 * MIB, 1000
    unsynced = median_of(runs, lambda: time_promotion(total, count, False, sync=False))
    rows.append(
        {"bundle": "1024 MiB / 1000 files, producer did not sync", "promote_s": unsynced["median"]}
    )
    return rows


# -- 2. checksum throughput ----------------------------------------------------------------


def bench_checksums(runs: int) -> Rows:
    rows = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        root = Path(tmp)
        for label, total, count in (
            ("one 1 GiB file", 1024 * MIB, 1),
            ("1,000 files of 1 MiB", 1000 * MIB, 1000),
        ):
            staging = root / label.replace(" ", "_")
            make_bundle(staging, total, count, checksums=True, sync=True)
            files = sorted(str(p) for p in staging.rglob("*.bin"))
            base = median_of(
                runs,
                lambda f=files: _timed(
                    lambda: subprocess.run(["sha256sum", *f], stdout=subprocess.DEVNULL, check=True)
                ),
            )
            manifest = json.loads((staging / "manifest.json").read_text())
            parsed = parse_manifest(json.dumps(manifest).encode())
            ours = median_of(
                runs, lambda s=staging, p=parsed: _timed(lambda: check_files(s, p.files))
            )
            rows.append(
                {
                    "files": label,
                    "sha256sum_s": base["median"],
                    "sidecar_s": ours["median"],
                    "ratio": ours["median"] / base["median"],
                    "sidecar_mib_s": total / MIB / ours["median"],
                }
            )
    return rows


def _timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


# -- daemon helpers ------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_daemon(root: Path, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {
        **os.environ,
        "MODELS_ROOT": str(root),
        "RELOAD_URL": "",
        "METRICS_ADDR": "127.0.0.1",
        "METRICS_PORT": str(port),
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", *args], env=env, stderr=subprocess.DEVNULL
    )
    return proc, port


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - 127.0.0.1 only
            return int(response.status)
    except OSError:
        return 0


def wait_ready(port: int, deadline: float = 20) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < deadline:
        if get(f"http://127.0.0.1:{port}/readyz") == 200:
            return time.perf_counter() - start
        time.sleep(0.002)
    raise RuntimeError("daemon not ready")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- 3. READY-to-switch latency ----------------------------------------------------------


def latency(root: Path, samples: int, watch: bool) -> dict[str, Any]:
    proc, port = start_daemon(root, "--poll-interval", "1", "--watch" if watch else "--no-watch")
    try:
        wait_ready(port)
        values = []
        for i in range(samples):
            staging = root / "staging"
            (staging / "model.bin").write_bytes(os.urandom(MIB))
            (staging / "manifest.json").write_text(json.dumps({"version": f"v{i}"}))
            os.sync()
            before = os.readlink(root / "current") if (root / "current").is_symlink() else None
            if not watch:  # a producer's READY lands at a random phase of the poll
                time.sleep(random.uniform(0, 1))
            start = time.perf_counter()
            (staging / "READY").write_text("")
            while (
                os.readlink(root / "current") == before
                if before
                else not (root / "current").is_symlink()
            ):
                if time.perf_counter() - start > 10:
                    raise RuntimeError("no switch in 10 s")
                time.sleep(0.0005)
            values.append(time.perf_counter() - start)
            while (staging / "READY").exists():
                time.sleep(0.001)
        values.sort()
        return {
            "p50_ms": statistics.median(values) * 1000,
            "p99_ms": values[min(len(values) - 1, int(len(values) * 0.99))] * 1000,
            "samples": len(values),
        }
    finally:
        stop(proc)


# -- 4. memory and CPU ---------------------------------------------------------------------


def idle_figures(root: Path, interval: str, seconds: float) -> dict[str, float]:
    proc, port = start_daemon(root, "--poll-interval", interval)
    try:
        wait_ready(port)
        time.sleep(5)
        cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
        time.sleep(seconds)
        cpu = cpu_seconds(proc.pid) - cpu0
        elapsed = time.perf_counter() - t0
        return {
            "rss_mib": rss_mib(proc.pid),
            "cpu_s_per_hour": cpu * 3600 / elapsed,
            "window_s": elapsed,
        }
    finally:
        stop(proc)


def growth_after_promotions(root: Path, count: int) -> dict[str, float]:
    proc, port = start_daemon(root, "--poll-interval", "1", "--watch")
    try:
        wait_ready(port)
        marks = {}
        for i in range(2 * count):
            staging = root / "staging"
            (staging / "m.bin").write_bytes(i.to_bytes(8, "big"))
            (staging / "READY").write_text("")
            while (staging / "READY").exists():
                time.sleep(0.0005)
            if i + 1 in (100, count, 2 * count):
                time.sleep(1.5)  # let the pass (and its retention) finish
                marks[i + 1] = rss_mib(proc.pid)
        return {
            "rss_after_100_mib": marks[100],
            f"rss_after_{count}_mib": marks[count],
            "growth_mib": marks[count] - marks[100],
            "growth_second_batch_mib": marks[2 * count] - marks[count],
        }
    finally:
        stop(proc)


# -- 5. start-up ----------------------------------------------------------------------------


def startup(root: Path) -> float:
    proc, port = start_daemon(root, "--poll-interval", "30")
    try:
        return wait_ready(port)
    finally:
        stop(proc)


# -- report ---------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(r: dict[str, Any]) -> str:
    out = [
        "## 1. Promotion wall time (median)",
        "",
        "| bundle | cp -a + ln -sfn | promote | promote + sha256 | speed-up vs cp |",
        "|---|---|---|---|---|",
    ]
    for row in r["promotion"]:
        if "cp_s" in row:
            out.append(
                f"| {row['bundle']} | {row['cp_s']:.3f} s | {row['promote_s']:.3f} s | "
                f"{row['promote_checksums_s']:.3f} s | {row['speedup_vs_cp']:.0f}x |"
            )
        else:
            out.append(f"| {row['bundle']} | | {row['promote_s']:.3f} s | | |")
    out += [
        "",
        "## 2. Checksum verification (median)",
        "",
        "| files | sha256sum | sidecar | ratio | sidecar MiB/s |",
        "|---|---|---|---|---|",
    ]
    for row in r["checksums"]:
        out.append(
            f"| {row['files']} | {row['sha256sum_s']:.3f} s | {row['sidecar_s']:.3f} s |"
            f" {row['ratio']:.2f} | {row['sidecar_mib_s']:.0f} |"
        )
    lat = r["latency"]
    out += [
        "",
        "## 3. READY-to-switch latency (1 MiB bundle, outside observer)",
        "",
        "| mode | p50 | p99 | samples |",
        "|---|---|---|---|",
        f"| poll, 1 s interval | {lat['poll']['p50_ms']:.0f} ms |"
        f" {lat['poll']['p99_ms']:.0f} ms | {lat['poll']['samples']} |",
        f"| watch | {lat['watch']['p50_ms']:.1f} ms | {lat['watch']['p99_ms']:.1f} ms |"
        f" {lat['watch']['samples']} |",
    ]
    mem = r["memory"]
    out += [
        "",
        "## 4. Memory and CPU",
        "",
        "| figure | value |",
        "|---|---|",
        f"| VmRSS idle (1 s interval, {mem['idle_1s']['window_s']:.0f} s) |"
        f" {mem['idle_1s']['rss_mib']:.1f} MiB |",
        f"| idle CPU at 1 s interval | {mem['idle_1s']['cpu_s_per_hour']:.2f} s/hour |",
        f"| idle CPU at 30 s interval | {mem['idle_30s']['cpu_s_per_hour']:.2f} s/hour |",
        f"| VmRSS after 100 promotions | {mem['promotions']['rss_after_100_mib']:.1f} MiB |",
        f"| growth from 100 to {r['promotions_count']} promotions |"
        f" {mem['promotions']['growth_mib']:.2f} MiB |",
        f"| growth over the next {r['promotions_count']} promotions |"
        f" {mem['promotions']['growth_second_batch_mib']:.2f} MiB |",
        "",
        "## 5. Start-up",
        "",
        f"| start to /readyz (median) | {r['startup']['median'] * 1000:.0f} ms |",
        "|---|---|",
    ]
    one_gib = next(x for x in r["promotion"] if x["bundle"] == "1024 MiB / 1000 files")
    many = next(x for x in r["checksums"] if x["files"].startswith("1,000"))
    targets = [
        (
            "1 GiB / 1,000 files without checksums >= 100x faster than cp",
            one_gib["speedup_vs_cp"] >= 100,
        ),
        ("verification <= 1.3x the time of sha256sum (1,000 files)", many["ratio"] <= 1.3),
        (
            "watch p50 <= 50 ms, p99 <= 200 ms",
            lat["watch"]["p50_ms"] <= 50 and lat["watch"]["p99_ms"] <= 200,
        ),
        ("idle RSS <= 30 MiB", mem["idle_1s"]["rss_mib"] <= 30),
        ("growth after promotions <= 1 MiB", mem["promotions"]["growth_mib"] <= 1),
        ("idle CPU <= 1 CPU-second per hour at 30 s", mem["idle_30s"]["cpu_s_per_hour"] <= 1),
        ("start to /readyz <= 1 s", r["startup"]["median"] <= 1),
    ]
    out += ["", "## Targets", "", "| target | |", "|---|---|"]
    out += [f"| {name} | {verdict(ok)} |" for name, ok in targets]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 runs, shorter windows")
    parser.add_argument("--promotions", type=int, default=1000)
    args = parser.parse_args()
    runs = 3 if args.quick else 5
    idle = 60.0 if args.quick else 300.0
    r: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "arch": os.uname().machine,
            "python": sys.version.split()[0],
        },
        "runs": runs,
        "promotions_count": args.promotions,
    }
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)

        def fresh(name: str) -> Path:
            path = base / name
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir()
            return path

        r["startup"] = median_of(runs, lambda: startup(fresh("startup")))
        r["latency"] = {
            "watch": latency(fresh("watch"), 100 if not args.quick else 40, True),
            "poll": latency(fresh("poll"), 20 if not args.quick else 8, False),
        }
        r["memory"] = {
            "idle_1s": idle_figures(fresh("idle1"), "1", idle),
            "idle_30s": idle_figures(fresh("idle30"), "30", idle),
            "promotions": growth_after_promotions(fresh("grow"), args.promotions),
        }
    r["checksums"] = bench_checksums(runs)
    r["promotion"] = bench_promotion(runs, SHAPES)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "results.json").write_text(json.dumps(r, indent=2))
    print(report(r))


if __name__ == "__main__":
    main()
