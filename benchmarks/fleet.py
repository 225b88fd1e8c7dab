"""A fleet on one machine: N sidecar daemons following one tag of one local registry,
scraped by one real Prometheus.

    uv run python -m benchmarks.fleet --nodes 30 --mib 8

Each node has its own volume and metrics port, ``SOURCE`` set to ``:stable`` and
``TRUSTED_KEYS_FILE`` set. The scenario:

1. v1 pushed (signed): every node must serve it;
2. v2 pushed (signed, one file changed): the registry is killed during the pulls and
   restarted 3 s later on the same port, and some sidecars are SIGKILLed during their
   pull and restarted; every node must still serve v2;
3. v3 signed by a key nobody trusts: every node rejects it (``signature_invalid``);
4. v4 signed, with a blob corrupted in the registry's storage before the tag names it:
   every node refuses it (``digest_mismatch``) and stages nothing;
5. checks: every node serves v2, nothing unverified was ever promoted, no staging holds
   a bundle, every promotion's digest is v1's or v2's; then the fleet dashboard's
   queries are run against the Prometheus.

Figures printed (not asserted): time from push to all N nodes serving (p50 and max over
the nodes), registry checks per idle node per hour, idle RSS of a node with SOURCE and
signatures, with SOURCE only, and with neither. Everything binds to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from registry import Registry  # noqa: E402

REPO = "models/forecaster"
MIB = 1024 * 1024
POLL = 5  # SOURCE_POLL_SECONDS (the minimum): a rollout takes seconds, not minutes


class FleetFailure(AssertionError):
    """A node did not end where the contract says it must."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_text(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (127.0.0.1)
        return str(response.read().decode())


# -- bundles, pushed with the real CLI --------------------------------------------------------


def make_bundle(path: Path, version: str, mib: int, changed: bytes, model: str) -> Path:
    """model.bin (its bytes depend on model only: a version with the same model is a
    delta pull) and a small file that changes; a manifest listing both."""
    path.mkdir(parents=True)
    with (path / "model.bin").open("wb") as fh:
        for i in range(mib):
            fh.write(hashlib.sha256(f"{model}{i}".encode()).digest() * (MIB // 32))
    (path / "calibration.bin").write_bytes(changed)
    files = {}
    for name in ("model.bin", "calibration.bin"):
        with (path / name).open("rb") as fh:
            files[name] = {
                "sha256": hashlib.file_digest(fh, "sha256").hexdigest(),
                "size": (path / name).stat().st_size,
            }
    (path / "manifest.json").write_text(json.dumps({"version": version, "files": files}))
    return path


def push(work: Path, host: str, bundle: Path, tag: str, key: Path) -> str:
    """`forecaster-sidecar push --sign`; the digest it prints."""
    env = {**os.environ, "SOURCE_INSECURE": host, "REGISTRY_AUTH_FILE": str(work / "no-auth.json")}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "service",
            "push",
            str(bundle),
            f"{host}/{REPO}:{tag}",
            "--sign",
            str(key),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if out.returncode != 0:
        raise FleetFailure(f"push {bundle.name} failed: {out.stderr.strip()}")
    match = re.search(r"sha256:[0-9a-f]{64}", out.stdout)
    assert match is not None, out.stdout
    return match.group(0)


def retag(host: str, source: str, tag: str) -> None:
    from service.oci.client import RegistryClient
    from service.oci.push import retag as oci_retag

    client = RegistryClient(host, REPO, insecure=frozenset({host}), actions="pull,push")
    oci_retag(client, source, tag)


def keypair(work: Path, name: str) -> tuple[Path, Path]:
    private, public = work / f"{name}.pem", work / f"{name}.pub.pem"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(private)],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["openssl", "pkey", "-in", str(private), "-pubout", "-out", str(public)],
        check=True,
        capture_output=True,
    )
    return private, public


# -- the nodes -------------------------------------------------------------------------------


@dataclass
class Node:
    root: Path
    port: int
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service", "run"],
                env=self.env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def current(self) -> str | None:
        try:
            return Path(os.readlink(self.root / "current")).name
        except OSError:
            return None

    def metric(self, name: str, **labels: str) -> float:
        """A sample of the node's /metrics (0 when the node does not answer)."""
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        prefix = f"{name}{{{wanted}}} " if labels else f"{name} "
        try:
            text = http_text(f"http://127.0.0.1:{self.port}/metrics")
        except OSError:
            return 0.0
        return next(
            (float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix)), 0.0
        )

    def rss_kib(self) -> int:
        assert self.proc is not None
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(next(ln for ln in status.splitlines() if ln.startswith("VmRSS")).split()[1])


def make_node(
    work: Path, name: str, host: str, keys: Path | None, source: bool = True, tag: str = "stable"
) -> Node:
    root, port = work / name, free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELOAD_", "POLL_"))}
    env.update(
        {
            "MODELS_ROOT": str(root),
            "RELOAD_URL": "",
            "LOG_FORMAT": "json",
            "METRICS_ADDR": "127.0.0.1",
            "METRICS_PORT": str(port),
            "REGISTRY_AUTH_FILE": str(work / "no-auth.json"),
            "REQUIRE_MANIFEST": "true",
            "MALLOC_ARENA_MAX": "1",  # as the image runs it (Dockerfile)
        }
    )
    if source:
        env.update(
            {
                "SOURCE": f"oci://{host}/{REPO}:{tag}",
                "SOURCE_POLL_SECONDS": str(POLL),
                "SOURCE_INSECURE": host,
            }
        )
    if keys is not None:
        env["TRUSTED_KEYS_FILE"] = str(keys)
    return Node(root, port, env, work / f"{name}.log")


def wait_ready(nodes: list[Node], deadline: float = 60.0) -> None:
    end = time.monotonic() + deadline
    for node in nodes:
        while True:
            try:
                http_text(f"http://127.0.0.1:{node.port}/readyz", timeout=1)
                break  # 200 (a 503 raises HTTPError, an OSError)
            except OSError:
                pass
            if node.proc is not None and node.proc.poll() is not None:
                raise FleetFailure(f"{node.root.name} exited: {node.log.read_text()[-2000:]}")
            if time.monotonic() > end:
                raise FleetFailure(f"{node.root.name} not ready in {deadline} s")
            time.sleep(0.1)


def wait_all(
    nodes: list[Node], done: Any, deadline: float, what: str, started: float | None = None
) -> list[float]:
    """Seconds until done(node) held, per node, from started (default now); FleetFailure
    at the deadline."""
    started, times = started or time.monotonic(), {}
    while len(times) < len(nodes):
        for i, node in enumerate(nodes):
            if i not in times and done(node):
                times[i] = time.monotonic() - started
        if time.monotonic() > started + deadline:
            late = [nodes[i].root.name for i in range(len(nodes)) if i not in times]
            raise FleetFailure(f"{what}: {len(late)} nodes not done in {deadline} s: {late[:5]}")
        time.sleep(0.1)
    return sorted(times.values())


# -- Prometheus ------------------------------------------------------------------------------


@dataclass
class Prometheus:
    work: Path
    targets: list[int]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, binary: str) -> None:
        config = self.work / "prometheus.yml"
        config.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "scrape_configs": [
                        {
                            "job_name": "forecaster-sidecar",
                            "static_configs": [
                                {"targets": [f"127.0.0.1:{p}" for p in self.targets]}
                            ],
                        }
                    ],
                }
            )
        )
        with (self.work / "prometheus.log").open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.work / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def query(self, expr: str) -> list[Any]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?query={urllib.parse.quote(expr)}"
        body = json.loads(http_text(url))
        if body.get("status") != "success":
            raise FleetFailure(f"{expr}: {body}")
        return list(body["data"]["result"])

    def wait_query(self, expr: str, deadline: float = 30.0) -> list[Any]:
        end = time.monotonic() + deadline
        while True:
            try:
                if result := self.query(expr):
                    return result
            except OSError:
                pass
            if time.monotonic() > end:
                raise FleetFailure(f"no data in Prometheus for {expr}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


def fleet_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of the fleet dashboard, variables substituted."""
    spec = importlib.util.spec_from_file_location("dashboard", ROOT / "grafana" / "dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [
        (p["title"], t["expr"].replace("$job", ".*").replace("$__rate_interval", "1m"))
        for p in module.FLEET_PANELS
        for t in p["targets"]
    ]


# -- the scenario ----------------------------------------------------------------------------


@dataclass
class Fleet:
    work: Path
    registry: Registry
    nodes: list[Node]
    key: Path
    digests: dict[str, str] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    pushed: float = 0.0

    def publish(
        self, version: str, mib: int, key: Path | None = None, tag: str = "stable", model: str = "b"
    ) -> str:
        bundle = make_bundle(
            self.work / "bundles" / version,
            version,
            mib,
            os.urandom(4096) + version.encode(),
            model,
        )
        digest = push(self.work, self.registry.host, bundle, tag, key or self.key)
        self.pushed = time.monotonic()  # the tag names it from here on
        self.digests[version] = digest
        return digest

    def rollout(self, version: str, deadline: float) -> list[float]:
        times = wait_all(
            self.nodes,
            lambda n: n.current() == version,
            deadline,
            f"rollout of {version}",
            self.pushed,
        )
        self.figures[f"rollout_{version}_s"] = {
            "p50": round(statistics.median(times), 2),
            "max": round(times[-1], 2),
        }
        return times


def downloading(nodes: list[Node]) -> list[Node]:
    """The nodes with a blob download in progress (a ``.part`` file in .sidecar/pull/)."""
    return [n for n in nodes if any((n.root / ".sidecar" / "pull").glob("*/blobs/*.part"))]


def wait_downloading(nodes: list[Node], deadline: float) -> list[Node]:
    end = time.monotonic() + deadline
    while not (found := downloading(nodes)) and time.monotonic() < end:
        time.sleep(0.01)
    return found


def disrupt(fleet: Fleet, version: str, victims: int) -> dict[str, int]:
    """While the nodes download version: kill the registry at the first download seen
    (3 s down, then restarted on the same port), SIGKILL the sidecars caught downloading
    then and again after the registry is back, and restart them (same volume and port)."""
    first = wait_downloading(fleet.nodes, 2 * POLL + 5)
    fleet.registry.kill()
    killed = first[:victims]
    for node in killed:
        node.kill()
    time.sleep(3)
    fleet.registry.start()
    for node in killed:
        node.start()
    second = [n for n in wait_downloading(fleet.nodes, 2 * POLL + 5) if n not in killed]
    for node in second[:victims]:
        node.kill()
        node.start()
    counts = {
        "downloads_in_progress_when_the_registry_died": len(first),
        "sidecars_sigkilled_mid_download": len(killed) + len(second[:victims]),
    }
    print(f"{version}: {counts}")
    return counts


def corrupt(registry: Registry, digest: str) -> None:
    blob = registry.blob_path(digest)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))


def check_end_state(fleet: Fleet, good: str) -> None:
    """Every node serves good; only v1 and v2 were ever promoted; nothing staged."""
    from service import history

    allowed = {fleet.digests["v1"], fleet.digests["v2"]}
    for node in fleet.nodes:
        name = node.root.name
        if node.current() != good:
            raise FleetFailure(f"{name} serves {node.current()}, not {good}")
        versions = sorted(os.listdir(node.root / "versions"))
        if not set(versions) <= {"v1", "v2"}:
            raise FleetFailure(f"{name} promoted {versions}")
        staged = os.listdir(node.root / "staging")
        if staged:
            raise FleetFailure(f"{name} has {staged} in staging")
        events = history.read(node.root / ".sidecar" / "history.jsonl")
        promoted = {e.get("digest") for e in events if e["event"] == "promoted"}
        if not promoted <= allowed:
            raise FleetFailure(f"{name} promoted digests {promoted - allowed}")


def idle_figures(fleet: Fleet, prometheus: Prometheus, extra: list[Node]) -> None:
    """Registry checks per idle node per hour (from the nodes' counters over an idle
    window) and idle RSS."""
    window = 3 * POLL + 2
    before = [n.metric("model_sidecar_source_checks_total") for n in fleet.nodes]
    bytes_before = sum(n.metric("model_sidecar_pull_bytes_total") for n in fleet.nodes)
    time.sleep(window)
    after = [n.metric("model_sidecar_source_checks_total") for n in fleet.nodes]
    bytes_after = sum(n.metric("model_sidecar_pull_bytes_total") for n in fleet.nodes)
    per_hour = statistics.mean(a - b for a, b in zip(after, before, strict=True)) * 3600 / window
    fleet.figures["registry_requests_per_idle_node_per_hour"] = {
        f"SOURCE_POLL_SECONDS={POLL}": round(per_hour),
        "SOURCE_POLL_SECONDS=60 (scaled)": round(per_hour * POLL / 60),
        "bytes_pulled_while_idle": bytes_after - bytes_before,
    }
    rss = sorted(n.rss_kib() for n in fleet.nodes)
    fleet.figures["idle_rss_mib"] = {
        "SOURCE + TRUSTED_KEYS_FILE (fleet nodes, median)": round(statistics.median(rss) / 1024, 1),
        **{
            label: round(node.rss_kib() / 1024, 1)
            for label, node in zip(
                (
                    "SOURCE, no keys (pulled v1..v4 like the fleet)",
                    "neither",
                    "TRUSTED_KEYS_FILE, no SOURCE",
                    "SOURCE + keys, tag never pushed (checks only)",
                ),
                extra,
                strict=True,
            )
        },
    }


def run_queries(prometheus: Prometheus) -> dict[str, int]:
    """Each fleet dashboard query: its number of series (FleetFailure when empty)."""
    return {f"{title}: {expr}": len(prometheus.wait_query(expr)) for title, expr in fleet_queries()}


def run(
    nodes: int = 30,
    mib: int = 8,
    deadline: float = 180.0,
    work: Path | None = None,
    registry_binary: str | None = None,
    prometheus_binary: str | None = None,
) -> dict[str, Any]:
    """The whole scenario; the figures. FleetFailure when the fleet ends wrong."""
    work = work or Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    registry_binary = registry_binary or shutil.which("docker-registry")
    prometheus_binary = prometheus_binary or shutil.which("prometheus")
    if registry_binary is None or prometheus_binary is None:
        raise SystemExit(
            "needs docker-registry and prometheus (apt-get install docker-registry prometheus)"
        )
    key, trusted = keypair(work, "publisher")
    stranger, _ = keypair(work, "stranger")
    registry = Registry(work / "registry", binary=registry_binary).start()
    fleet = Fleet(
        work,
        registry,
        [make_node(work, f"node-{i:02d}", registry.host, trusted) for i in range(nodes)],
        key,
    )
    extra = [
        make_node(work, "ref-source", registry.host, None),
        make_node(work, "ref-plain", registry.host, None, source=False),
        make_node(work, "ref-keys", registry.host, trusted, source=False),
        make_node(work, "ref-checks", registry.host, trusted, tag="never-pushed"),
    ]
    prometheus = Prometheus(work, [n.port for n in [*fleet.nodes, *extra]])
    try:
        for node in [*fleet.nodes, *extra]:
            node.start()
        prometheus.start(prometheus_binary)
        wait_ready([*fleet.nodes, *extra])
        fleet.publish("v1", mib, model="a")
        fleet.rollout("v1", deadline)
        fleet.publish("v2", mib, model="b")  # a new model: every node downloads it whole
        disrupted = disrupt(fleet, "v2", max(2, nodes // 5))
        fleet.rollout("v2", deadline)
        fleet.figures["v2_interrupted"] = {
            **disrupted,
            "pull_failures_connection": sum(
                n.metric("model_sidecar_pull_failures_total", reason="connection")
                for n in fleet.nodes
            ),
            "downloads_failed": sum(
                n.metric("model_sidecar_pulls_total", outcome="failure") for n in fleet.nodes
            ),
            "note": "counters of the nodes SIGKILLed restart at 0",
        }
        fleet.publish("v3", mib, key=stranger)
        wait_all(
            fleet.nodes,
            lambda n: (
                n.metric("model_sidecar_promotion_failures_total", reason="signature_invalid") >= 1
            ),
            deadline,
            "rejection of v3 (signed by an unknown key)",
        )
        v4 = fleet.publish("v4", mib, tag="prepared")
        corrupt(
            registry,
            "sha256:"
            + hashlib.sha256(
                (work / "bundles" / "v4" / "calibration.bin").read_bytes()
            ).hexdigest(),
        )
        retag(registry.host, "prepared", "stable")
        wait_all(
            fleet.nodes,
            lambda n: n.metric("model_sidecar_pull_failures_total", reason="digest_mismatch") >= 1,
            deadline,
            f"refusal of v4 {v4} (a corrupted blob)",
        )
        check_end_state(fleet, "v2")
        # The tag back on v2 (promoted everywhere): idle nodes, one HEAD per check.
        retag(registry.host, fleet.digests["v2"], "stable")
        idle_figures(fleet, prometheus, extra)
        fleet.figures["dashboard_queries_series"] = run_queries(prometheus)
        return fleet.figures
    finally:
        for node in [*fleet.nodes, *extra]:
            node.stop()
        prometheus.stop()
        registry.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=30)
    parser.add_argument("--mib", type=int, default=8)
    parser.add_argument("--deadline", type=float, default=180.0)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    try:
        figures = run(args.nodes, args.mib, args.deadline, work)
        print(json.dumps(figures, indent=2))
    finally:
        if args.keep:
            print(f"work directory: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
