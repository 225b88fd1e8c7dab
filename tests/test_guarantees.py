"""SPEC section 4 under crashes and races, with the real daemon as a subprocess."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from verify import check_current, check_exactly_once, check_no_leftovers, promoted_counts

from tests.support import SidecarProcess, base_env, run_cli, wait_for, write_bundle

KILLS = int(os.environ.get("SIDECAR_TEST_KILLS", "40"))
PROMOTIONS = int(os.environ.get("SIDECAR_TEST_PROMOTIONS", "60"))


def bundle_files(version: str, n_small: int = 40) -> dict[str, bytes]:
    """A bundle whose every file names its version, so torn reads are visible."""
    tag = version.encode()
    files = {f"shard/{i:03d}.bin": tag * 512 for i in range(n_small)}
    files["model.bin"] = tag * 200_000
    return files


class Producer:
    """Stages bundles one after another, as the producer contract says."""

    def __init__(self, staging: Path, limit: int, n_small: int = 40) -> None:
        self.staging = staging
        self.limit = limit
        self.n_small = n_small
        self.staged: list[str] = []

    def ready_for_next(self) -> bool:
        return not (self.staging / "READY").exists() and not any(self.staging.iterdir())

    def step(self) -> bool:
        """Stage the next bundle if staging is free; True while there is more to stage."""
        if len(self.staged) >= self.limit:
            return False
        self.staging.mkdir(parents=True, exist_ok=True)
        if self.ready_for_next():
            version = f"b{len(self.staged):04d}"
            write_bundle(self.staging, bundle_files(version, self.n_small), version=version)
            self.staged.append(version)
        return True


@pytest.mark.slow
def test_sigkill_at_random_instants_never_breaks_the_guarantees(
    models: Path, start_daemon: Callable[..., SidecarProcess]
) -> None:
    """SIGKILL during promotions, recovery and retention; each restart keeps SPEC 4."""
    rng = random.Random(int(os.environ.get("SIDECAR_TEST_SEED", "20261130")))
    producer = Producer(models / "staging", limit=KILLS * 2)
    kills = 0
    while kills < KILLS:
        daemon = start_daemon(models, "--poll-interval", "1", KEEP_VERSIONS="3")
        deadline = time.monotonic() + rng.uniform(0.05, 0.8)
        while time.monotonic() < deadline:
            producer.step()
            time.sleep(0.005)
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait(10)
        kills += 1
        check_current(models)  # at the instant of the crash
    producer.limit = len(producer.staged)
    assert run_cli("--once", env=base_env(models, KEEP_VERSIONS="3")).returncode == 0
    check_current(models)
    check_no_leftovers(models)
    check_exactly_once(models, producer.staged, keep=3)
    assert sum(promoted_counts(models).values()) >= KILLS // 4, "kills rarely hit promotions"


@pytest.mark.slow
def test_readers_never_see_two_versions(
    models: Path, start_daemon: Callable[..., SidecarProcess]
) -> None:
    """Readers that resolve current once read files of one version only."""
    daemon = start_daemon(models, "--poll-interval", "1", KEEP_VERSIONS="100000")
    daemon.wait_ready()
    producer = Producer(models / "staging", limit=PROMOTIONS, n_small=10)
    stop = threading.Event()
    torn: list[str] = []
    reads = [0]

    def reader() -> None:
        while not stop.is_set():
            try:
                root = os.path.realpath(models / "current", strict=True)
                names = sorted(os.listdir(os.path.join(root, "shard")))
            except FileNotFoundError:
                continue  # nothing promoted yet
            tags = {Path(root, "shard", n).read_bytes()[:5] for n in names}
            tags.add(Path(root, "model.bin").read_bytes()[:5])
            reads[0] += 1
            if len(tags) != 1 or tags != {Path(root).name.encode()}:
                torn.append(f"{root}: {tags}")

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        while producer.step():
            time.sleep(0.001)
        wait_for(
            lambda: len(promoted_counts(models)) == PROMOTIONS, deadline=60, what="all promotions"
        )
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert torn == []
    assert reads[0] > PROMOTIONS
    assert daemon.stop() == 0


@pytest.mark.slow
def test_two_daemons_promote_each_bundle_exactly_once(
    models: Path, start_daemon: Callable[..., SidecarProcess]
) -> None:
    """Two daemons on one volume: the flock lets exactly one take each bundle."""
    daemons = [
        start_daemon(models, "--poll-interval", "1", KEEP_VERSIONS="100000") for _ in range(2)
    ]
    for daemon in daemons:
        daemon.wait_ready()
    producer = Producer(models / "staging", limit=20, n_small=5)
    while producer.step():
        time.sleep(0.005)
    wait_for(lambda: len(promoted_counts(models)) == 20, deadline=60, what="all promotions")
    check_exactly_once(models, producer.staged)
    successes = sum(
        d.metric("model_sidecar_promotions_total", outcome="success") or 0 for d in daemons
    )
    assert successes == 20
    for daemon in daemons:
        assert daemon.stop() == 0
    check_no_leftovers(models)
