"""The reliability campaign at any size; prints a table of figures (docs/reliability.md).

    uv run python -m benchmarks.chaos --kills 1000 --promotions 500 --hostile-bundles 1000
    uv run python -m benchmarks.chaos --hostile --hostile-examples 100

- crash: SIGKILL of the real daemon at random instants while a producer stages bundles
  of three shapes (one 200 MB file, 5,000 small files, nested directories); kills land
  in promotions, in recovery right after a start, and in retention (KEEP_VERSIONS=2).
  After every kill an independent verifier (tests/verify.py) checks that current is
  absent or a complete version with every checksum right; at the end, that every
  staged bundle was promoted exactly once or is still staged, and nothing is left over.
- torn reads: readers resolve current once and read every file of it during promotions.
- concurrency: three daemons and a stream of CLI rollbacks on one volume.
- hostile bundles and injected faults: the hypothesis and fault tests at the given size.
- ``--hostile`` runs only the adversarial suite (tests/adversarial: the producer, the
  operator and a damaged volume as attackers) with ``--hostile-examples`` cases per
  property instead of CI's 25, and prints the cases generated per attacker and property,
  the failures, the known bugs (strict xfails) and the stop-signal-to-exit times.

Only 127.0.0.1 is used. Violations are counted, not raised; the command exits 1 if any.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from verify import (  # noqa: E402
    check_current,
    check_exactly_once,
    check_no_leftovers,
    promoted_counts,
)

MB = 1024 * 1024


def env_for(models: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "MODELS_ROOT": str(models),
        "RELOAD_URL": "",
        "METRICS_PORT": "0",
        "LOG_FORMAT": "json",
        **extra,
    }


def start(models: Path, log: Path, **extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "service", "--poll-interval", "1"],
        env=env_for(models, **extra),
        cwd=ROOT,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def once(models: Path, **extra: str) -> int:
    return subprocess.run(
        [sys.executable, "-m", "service", "--once"],
        cwd=ROOT,
        env=env_for(models, **extra),
        capture_output=True,
        check=False,
    ).returncode


class Producer:
    """Stages bundles of rotating shapes whenever staging is free (the contract)."""

    def __init__(
        self, staging: Path, shape: Callable[[int], dict[str, bytes]] | None = None
    ) -> None:
        self.staging = staging
        self.files = shape or self.rotating
        self.staged: list[str] = []

    @staticmethod
    def rotating(n: int) -> dict[str, bytes]:
        tag = f"b{n:05d}".encode()
        shape = n % 3
        if shape == 0:
            return {"model.bin": tag * (200 * MB // len(tag))}
        if shape == 1:
            return {f"shard/{i:04d}.bin": tag * 8 for i in range(5000)}
        return {"/".join(f"d{j}" for j in range(1, 6)) + f"/f{i}.bin": tag * 64 for i in range(20)}

    def step(self) -> None:
        self.staging.mkdir(parents=True, exist_ok=True)
        if (self.staging / "READY").exists() or any(self.staging.iterdir()):
            return
        import hashlib

        n = len(self.staged)
        files = self.files(n)
        for name, data in files.items():
            path = self.staging / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        manifest = {
            "version": f"b{n:05d}",
            "files": {
                k: {"sha256": hashlib.sha256(v).hexdigest(), "size": len(v)}
                for k, v in files.items()
            },
        }
        (self.staging / "manifest.json").write_text(json.dumps(manifest))
        (self.staging / "READY").write_text("")
        self.staged.append(f"b{n:05d}")


def crash_campaign(kills: int, seed: int, tmp: Path) -> dict[str, Any]:
    rng = random.Random(seed)
    models = tmp / "crash"
    producer = Producer(models / "staging")
    log = tmp / "crash.log"
    violations: list[str] = []
    started = time.monotonic()
    for k in range(kills):
        proc = start(models, log, KEEP_VERSIONS="2")
        # a third of the kills land within 150 ms of the start: during recovery
        window = rng.uniform(0.0, 0.15) if k % 3 == 0 else rng.uniform(0.1, 1.5)
        end = time.monotonic() + window
        while time.monotonic() < end:
            producer.step()
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        try:
            check_current(models)
        except (AssertionError, OSError) as exc:
            violations.append(f"after kill {k}: {exc}")
    if once(models, KEEP_VERSIONS="2") != 0:
        violations.append("the final clean pass failed")
    for check in (
        lambda: check_current(models),
        lambda: check_no_leftovers(models),
        lambda: check_exactly_once(models, producer.staged, keep=2),
    ):
        try:
            check()
        except (AssertionError, OSError) as exc:
            violations.append(f"final: {exc}")
    text = log.read_text(errors="replace")
    return {
        "kills": kills,
        "bundles staged": len(producer.staged),
        "promotions": sum(promoted_counts(models).values()),
        "recoveries": text.count("finishing an interrupted")
        + text.count("returning an interrupted claim")
        + text.count("removed .current.tmp-"),
        "violations": len(violations),
        "violation details": violations[:5],
        "seconds": round(time.monotonic() - started),
    }


def torn_reads(promotions: int, tmp: Path) -> dict[str, Any]:
    models = tmp / "torn"
    producer = Producer(
        models / "staging", lambda n: {f"f{i}.bin": f"b{n:05d}".encode() * 64 for i in range(20)}
    )
    proc = start(models, tmp / "torn.log", KEEP_VERSIONS="100000")
    stop = threading.Event()
    torn, reads = [], [0]

    def reader() -> None:
        while not stop.is_set():
            try:
                root = os.path.realpath(models / "current", strict=True)
                tags = {
                    Path(root, n).read_bytes()[:6] for n in os.listdir(root) if n.endswith(".bin")
                }
            except FileNotFoundError:
                continue
            reads[0] += 1
            if tags != {Path(root).name.encode()}:
                torn.append(f"{root}: {tags}")

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        while len(promoted_counts(models)) < promotions:
            if len(producer.staged) < promotions:
                producer.step()
            time.sleep(0.001)
    finally:
        stop.set()
        for t in threads:
            t.join()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    return {"promotions": promotions, "reads": reads[0], "torn reads": len(torn)}


def concurrency(bundles: int, tmp: Path) -> dict[str, Any]:
    models = tmp / "race"
    producer = Producer(models / "staging", lambda n: {"m.bin": f"b{n:05d}".encode() * 1000})
    procs = [start(models, tmp / f"race-{i}.log", KEEP_VERSIONS="100000") for i in range(3)]
    stop = threading.Event()
    rollbacks = [0]

    def roll() -> None:
        while not stop.is_set():
            out = subprocess.run(
                [sys.executable, "-m", "service", "rollback"],
                cwd=ROOT,
                env=env_for(models),
                capture_output=True,
                check=False,
            )
            rollbacks[0] += out.returncode == 0

    roller = threading.Thread(target=roll)
    roller.start()
    violations = []
    try:
        while len(producer.staged) < bundles:
            producer.step()
            time.sleep(0.005)
        end = time.monotonic() + 60
        while len(promoted_counts(models)) < bundles and time.monotonic() < end:
            time.sleep(0.05)
    finally:
        stop.set()
        roller.join()
        for p in procs:
            p.send_signal(signal.SIGTERM)
            p.wait(30)
    for check in (
        lambda: check_current(models),
        lambda: check_no_leftovers(models),
        lambda: check_exactly_once(models, producer.staged),
    ):
        try:
            check()
        except (AssertionError, OSError) as exc:
            violations.append(str(exc))
    return {
        "daemons": 3,
        "bundles": bundles,
        "CLI rollbacks": rollbacks[0],
        "violations": len(violations),
        "violation details": violations[:5],
    }


def pytest_figures(path: str, **env: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", path],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    return {
        "result": out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr,
        "exit": out.returncode,
    }


ATTACKERS = ("producer", "operator", "damaged_volume")


def _junit_outcomes(path: Path) -> dict[str, list[str]]:
    """Test ids by outcome (passed, failed, xfailed, skipped) from a JUnit report, and the
    start of each failure's message (``details``)."""
    out: dict[str, list[str]] = {
        "passed": [],
        "failed": [],
        "xfailed": [],
        "skipped": [],
        "details": [],
    }
    for case in ET.parse(path).getroot().iter("testcase"):  # noqa: S314 - our own report
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        if failure is not None:
            out["failed"].append(name)
            text = failure.text or failure.get("message", "")
            found = [line for line in text.splitlines() if line.startswith("E ")]
            out["details"].append(f"{name}: " + " | ".join(found[:12])[:1500])
        elif (skipped := case.find("skipped")) is not None:
            out["xfailed" if skipped.get("type") == "pytest.xfail" else "skipped"].append(name)
        else:
            out["passed"].append(name)
    return out


def hostile_campaign(examples: int, tmp: Path) -> dict[str, Any]:
    """The adversarial suite with ``examples`` cases per property; cases counted by the
    suite itself (HOSTILE_REPORT), outcomes read from a JUnit report."""
    report, junit = tmp / "cases.jsonl", tmp / "adversarial.xml"
    started = time.monotonic()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/adversarial",
            f"--junitxml={junit}",
            "-o",
            "junit_logging=system-out",
            "-s",
        ],
        cwd=ROOT,
        env={**os.environ, "HOSTILE_EXAMPLES": str(examples), "HOSTILE_REPORT": str(report)},
        capture_output=True,
        text=True,
        check=False,
    )
    cases: dict[str, collections.Counter[str]] = {a: collections.Counter() for a in ATTACKERS}
    for line in report.read_text().splitlines() if report.exists() else []:
        record = json.loads(line)
        cases[record["attacker"]][record["test"]] += 1
    outcomes = _junit_outcomes(junit) if junit.exists() else {"failed": ["no report"]}
    stops = re.findall(r"(SIG[A-Z]+) to exit: ([0-9.]+) s", out.stdout)
    return {
        "examples per property": examples,
        "cases per attacker": {a: sum(c.values()) for a, c in cases.items()},
        "cases per property": {a: dict(c) for a, c in cases.items()},
        "failures": outcomes.get("failed", []),
        "failure details": outcomes.get("details", []),
        "known bugs (xfail strict)": outcomes.get("xfailed", []),
        "passed": len(outcomes.get("passed", [])),
        "stop signal to exit (s)": {sig: float(t) for sig, t in stops},
        "pytest": out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr,
        "exit": out.returncode,
        "seconds": round(time.monotonic() - started),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=1000)
    parser.add_argument("--promotions", type=int, default=500)
    parser.add_argument(
        "--hostile-bundles",
        type=int,
        default=1000,
        help="examples of tests/reliability/test_hostile_bundles.py",
    )
    parser.add_argument(
        "--hostile", action="store_true", help="run only the adversarial suite (tests/adversarial)"
    )
    parser.add_argument(
        "--hostile-examples",
        type=int,
        default=100,
        help="cases per property of the adversarial suite",
    )
    parser.add_argument("--race-bundles", type=int, default=100)
    parser.add_argument("--seed", type=int, default=20261130)
    args = parser.parse_args()
    started = time.monotonic()
    if args.hostile:
        with tempfile.TemporaryDirectory() as tmp:
            hostile = hostile_campaign(args.hostile_examples, Path(tmp))
        print(json.dumps(hostile, indent=2))
        return 1 if hostile["exit"] or hostile["failures"] else 0
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        figures = {
            "crash": crash_campaign(args.kills, args.seed, base),
            "torn reads": torn_reads(args.promotions, base),
            "concurrency": concurrency(args.race_bundles, base),
            "hostile bundles": {
                "examples": args.hostile_bundles,
                **pytest_figures(
                    "tests/reliability/test_hostile_bundles.py",
                    SIDECAR_HOSTILE_EXAMPLES=str(args.hostile_bundles),
                ),
            },
            "faults": pytest_figures("tests/reliability/test_faults.py"),
        }
    figures["duration_s"] = round(time.monotonic() - started)
    print(json.dumps(figures, indent=2))
    bad = (
        figures["crash"]["violations"]
        + figures["torn reads"]["torn reads"]
        + figures["concurrency"]["violations"]
        + figures["hostile bundles"]["exit"]
        + figures["faults"]["exit"]
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
