"""Pull figures for docs/fleet.md, against Debian's docker-registry on 127.0.0.1.

    uv run python -m benchmarks.pull              # 1 GiB bundle, 3 pulls
    uv run python -m benchmarks.pull --mib 256    # smaller

Prints: the time of one HEAD on a kept-alive connection (the idle cost of a sidecar),
HEADs per second from several clients, push time, the pull job's throughput for the
whole bundle (download, sha256 of every byte, fsync, handoff to staging) and its peak
RSS, curl fetching the same blobs (no hashing) as the baseline, and a delta pull (one
small file changed, the rest reused from current). Results also go to
benchmarks/results/pull.json (git-ignored). Everything talks only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from registry import Registry  # noqa: E402

from service.oci.client import RegistryClient  # noqa: E402
from service.oci.push import push_bundle  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
MIB = 1024 * 1024
REPO = "models/forecaster"

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from prometheus_client import CollectorRegistry
from service.layout import Layout
from service.jobs.pull import PullJob
from service.oci.check import SourceCheck
from service.oci.client import RegistryClient
from service.oci.reference import parse_reference
from service.pull_metrics import PullMetrics
host, root, tag = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
paths = Layout(root, root / "staging", root / "current")
client = RegistryClient(host, "models/forecaster", insecure=frozenset({host}))
check = SourceCheck(host, "models/forecaster", insecure=frozenset({host}))
job = PullJob(paths, parse_reference(f"oci://{host}/models/forecaster:{tag}"), check,
              lambda: client, PullMetrics(CollectorRegistry()))
start = time.monotonic()
result = job.run()
print(json.dumps({"seconds": time.monotonic() - start, "outcome": result.outcome,
                  "bytes": client.stats.bytes_received,
                  "requests": client.stats.requests + check.stats.requests,
                  "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_random(path: Path, size: int) -> None:
    with path.open("wb") as fh:
        for _ in range(size // MIB):
            fh.write(os.urandom(MIB))
        fh.write(os.urandom(size % MIB))


def make_bundle(path: Path, total_mib: int) -> None:
    """Four equal model files, a 1 MiB file that changes between versions, a manifest."""
    import hashlib

    path.mkdir(parents=True)
    for i in range(4):
        write_random(path / f"model-{i}.bin", total_mib * MIB // 4)
    write_random(path / "calibration.bin", MIB)
    files = {}
    for entry in sorted(path.iterdir()):
        with entry.open("rb") as fh:
            files[entry.name] = {
                "sha256": hashlib.file_digest(fh, "sha256").hexdigest(),
                "size": entry.stat().st_size,
            }
    (path / "manifest.json").write_text(json.dumps({"version": path.name, "files": files}))


def client(host: str, actions: str = "pull") -> RegistryClient:
    return RegistryClient(host, REPO, insecure=frozenset({host}), actions=actions)


def head_latency(host: str, count: int = 500) -> dict[str, float]:
    c = client(host)
    c.head_manifest("v1")  # connect
    times = []
    for _ in range(count):
        start = time.perf_counter()
        c.head_manifest("v1")
        times.append(time.perf_counter() - start)
    times.sort()
    return {
        "median_ms": statistics.median(times) * 1000,
        "p99_ms": times[int(len(times) * 0.99)] * 1000,
    }


def head_throughput(host: str, threads: int = 8, seconds: float = 3.0) -> float:
    """HEADs per second from several clients (the Python clients share the 2 cores with
    the registry, so this is a lower bound of what one registry process serves)."""
    done = [0] * threads
    end = time.monotonic() + seconds

    def worker(i: int) -> None:
        c = client(host)
        while time.monotonic() < end:
            c.head_manifest("v1")
            done[i] += 1

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return sum(done) / seconds


def pull_once(host: str, volume: Path, tag: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, host, str(volume), tag],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, Any] = json.loads(out)
    assert result["outcome"] == "staged", result
    return result


def promote(volume: Path, version: str) -> None:
    """Move staging to versions/<version> and point current at it (as promotion does),
    recording the digest, so the next pull can reuse its files."""
    from service.jobs.pull import record_outcome, staged_digest

    staging, target = volume / "staging", volume / "versions" / version
    digest = staged_digest(volume / ".sidecar", (staging / "manifest.json").read_bytes())
    assert digest is not None
    target.mkdir(parents=True)
    for entry in os.listdir(staging):
        if entry != "READY":
            os.rename(staging / entry, target / entry)
    (staging / "READY").unlink()
    os.symlink(os.path.relpath(target, volume), volume / "current")
    record_outcome(volume / ".sidecar", digest, "promoted", version)


def curl_blobs(host: str, bundle: Path, dest: Path) -> float:
    import hashlib

    dest.mkdir()
    urls = []
    for entry in sorted(bundle.iterdir()):
        with entry.open("rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        urls.append(f"http://{host}/v2/{REPO}/blobs/sha256:{digest}")
    start = time.monotonic()
    for i, url in enumerate(urls):
        subprocess.run(["curl", "-sf", "-o", str(dest / str(i)), url], check=True)
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=1024, help="bundle size in MiB")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-pull-"))
    binary = shutil.which("docker-registry")
    if binary is None or shutil.which("curl") is None:
        sys.exit("needs docker-registry and curl (apt-get install docker-registry curl)")
    reg = Registry(work / "registry", binary=binary).start()
    results: dict[str, Any] = {"bundle_mib": args.mib + 1}
    try:
        make_bundle(work / "v1", args.mib)
        start = time.monotonic()
        push_bundle(client(reg.host, "pull,push"), "v1", work / "v1")
        results["push_seconds"] = time.monotonic() - start
        results["head"] = head_latency(reg.host)
        results["head_per_second_8_clients"] = head_throughput(reg.host)
        pulls, curls = [], []
        for run in range(args.runs):
            pulls.append(pull_once(reg.host, work / f"vol-{run}", "v1"))
            curls.append(curl_blobs(reg.host, work / "v1", work / f"curl-{run}"))
            shutil.rmtree(work / f"curl-{run}")
            if run:
                shutil.rmtree(work / f"vol-{run}")
        size = (args.mib + 1) * MIB
        results["pull_seconds"] = statistics.median(p["seconds"] for p in pulls)
        results["pull_mib_per_second"] = size / MIB / results["pull_seconds"]
        results["pull_maxrss_mib"] = max(p["maxrss_mib"] for p in pulls)
        results["curl_seconds"] = statistics.median(curls)
        results["curl_mib_per_second"] = size / MIB / results["curl_seconds"]
        results.update(delta(reg.host, work))
    finally:
        reg.stop()
        shutil.rmtree(work, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pull.json").write_text(json.dumps(results, indent=2) + "\n")
    for key, value in results.items():
        print(f"{key:32} {value if not isinstance(value, float) else round(value, 3)}")


def delta(host: str, work: Path) -> dict[str, Any]:
    """v2 changes calibration.bin only: bytes and time of its pull onto a volume whose
    current is v1 (the four model files are copied from current with their sha256)."""
    volume = work / "vol-0"
    promote(volume, "v1")
    shutil.copytree(work / "v1", work / "v2")
    write_random(work / "v2" / "calibration.bin", MIB)
    manifest = json.loads((work / "v2" / "manifest.json").read_text())
    import hashlib

    with (work / "v2" / "calibration.bin").open("rb") as fh:
        manifest["files"]["calibration.bin"]["sha256"] = hashlib.file_digest(
            fh, "sha256"
        ).hexdigest()
    manifest["version"] = "v2"
    (work / "v2" / "manifest.json").write_text(json.dumps(manifest))
    pushed = push_bundle(client(host, "pull,push"), "v2", work / "v2")
    result = pull_once(host, volume, "v2")
    return {
        "delta_blobs_uploaded": pushed.uploaded,
        "delta_pull_bytes": result["bytes"],
        "delta_pull_requests": result["requests"],
        "delta_pull_seconds": result["seconds"],
    }


if __name__ == "__main__":
    main()
