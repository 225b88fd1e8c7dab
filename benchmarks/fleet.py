"""A fleet on one machine: N sidecar daemons following one tag of one local registry.

    uv run python -m benchmarks.fleet --nodes 20 --mib 50

UNTESTED SKELETON: it needs the pull job wired into the daemon (config fields SOURCE,
SOURCE_POLL_SECONDS, SOURCE_INSECURE, REGISTRY_AUTH_FILE, TRUSTED_KEYS_FILE of SPEC 12
and the second APScheduler job). Until then every node simply never converges and the
script stops at its deadline, saying so.

What it measures: for a signed bundle pushed to ``:stable``, the time until every node's
``current`` is that version (median, p90, max), the registry bytes each node received
(``model_sidecar_pull_bytes_total``), then the same for a second version with one file
changed (delta pulls), and the registry's RSS. Everything binds to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from registry import Registry  # noqa: E402

from service.oci.client import RegistryClient  # noqa: E402
from service.oci.push import push_bundle  # noqa: E402
from service.signing import sign_manifest  # noqa: E402

REPO = "models/forecaster"
MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_bundle(path: Path, version: str, mib: int, key: Path, changed: bytes) -> None:
    import hashlib

    path.mkdir(parents=True)
    with (path / "model.bin").open("wb") as fh:
        for i in range(mib):
            fh.write(hashlib.sha256(str(i).encode()).digest() * (MIB // 32))
    (path / "calibration.bin").write_bytes(changed)
    files = {}
    for name in ("model.bin", "calibration.bin"):
        with (path / name).open("rb") as fh:
            files[name] = {"sha256": hashlib.file_digest(fh, "sha256").hexdigest(),
                           "size": (path / name).stat().st_size}
    manifest = json.dumps({"version": version, "files": files}).encode()
    (path / "manifest.json").write_bytes(manifest)
    (path / "manifest.json.sig").write_bytes(sign_manifest(manifest, key))


def start_node(work: Path, index: int, host: str, keys: Path) -> tuple[subprocess.Popen[bytes],
                                                                        int, Path]:
    root, port = work / f"node-{index}", free_port()
    env = {**os.environ, "MODELS_ROOT": str(root), "RELOAD_URL": "", "LOG_FORMAT": "json",
           "METRICS_ADDR": "127.0.0.1", "METRICS_PORT": str(port),
           "SOURCE": f"oci://{host}/{REPO}:stable", "SOURCE_POLL_SECONDS": "5",
           "SOURCE_INSECURE": host, "TRUSTED_KEYS_FILE": str(keys),
           "REGISTRY_AUTH_FILE": str(work / "no-auth.json"), "REQUIRE_MANIFEST": "true"}
    log = (work / f"node-{index}.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "service", "run"], env=env, cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)
    return proc, port, root


def current(root: Path) -> str | None:
    try:
        return Path(os.readlink(root / "current")).name
    except OSError:
        return None


def wait_converged(roots: list[Path], version: str, started: float,
                   deadline: float) -> list[float]:
    done: dict[Path, float] = {}
    while len(done) < len(roots) and time.monotonic() < started + deadline:
        for root in roots:
            if root not in done and current(root) == version:
                done[root] = time.monotonic() - started
        time.sleep(0.1)
    return sorted(done.values())


def pull_bytes(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith("model_sidecar_pull_bytes_total "):
            return float(line.split()[1])
    return 0.0


def report(label: str, times: list[float], nodes: int) -> None:
    if len(times) < nodes:
        print(f"{label}: only {len(times)}/{nodes} nodes converged (is the pull job wired?)")
    if times:
        p90 = times[min(len(times) - 1, int(len(times) * 0.9))]
        print(f"{label}: median {statistics.median(times):.2f} s, p90 {p90:.2f} s, "
              f"max {times[-1]:.2f} s")


def rollout(reg: Registry, work: Path, version: str, mib: int, key: Path, changed: bytes,
            nodes: list[tuple[subprocess.Popen[bytes], int, Path]], deadline: float) -> None:
    make_bundle(work / version, version, mib, key, changed)
    client = RegistryClient(reg.host, REPO, insecure=frozenset({reg.host}),
                            actions="pull,push")
    started = time.monotonic()
    push_bundle(client, "stable", work / version)
    times = wait_converged([root for _, _, root in nodes], version, started, deadline)
    report(f"rollout {version}", times, len(nodes))
    total = sum(pull_bytes(port) for _, port, _ in nodes)
    print(f"rollout {version}: registry bytes so far, all nodes: {total / MIB:.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--mib", type=int, default=50)
    parser.add_argument("--deadline", type=float, default=120.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    binary = shutil.which("docker-registry")
    if binary is None:
        sys.exit("needs docker-registry (apt-get install docker-registry)")
    key, keys = work / "key.pem", work / "trusted.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(key)], check=True)
    subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout", "-out", str(keys)],
                   check=True)
    reg = Registry(work / "registry", binary=binary).start()
    nodes = [start_node(work, i, reg.host, keys) for i in range(args.nodes)]
    try:
        rollout(reg, work, "v1", args.mib, key, os.urandom(MIB), nodes, args.deadline)
        rollout(reg, work, "v2", args.mib, key, os.urandom(MIB), nodes, args.deadline)
        assert reg.proc is not None
        status = Path(f"/proc/{reg.proc.pid}/status").read_text()
        rss = next(line for line in status.splitlines() if line.startswith("VmHWM"))
        print(f"registry peak RSS: {rss.split(':')[1].strip()}")
    finally:
        for proc, _, _ in nodes:
            proc.terminate()
        for proc, _, _ in nodes:
            proc.wait(30)
        reg.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
