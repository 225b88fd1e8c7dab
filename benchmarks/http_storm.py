"""/healthz latency of the real sidecar under 1,000 idle sockets and a scrape storm.

    uv run python -m benchmarks.http_storm                 # the figures of the report
    uv run python -m benchmarks.http_storm --storm-seconds 3 --probes 50   # quicker

Starts ``python -m service run --no-reload --metrics-addr 127.0.0.1`` on a temporary
volume and measures, from a process that does nothing else, the time of one probe (a new
connection, GET /healthz, the whole response) while idle, with 1,000 idle sockets open,
while scrapers in other processes fetch /metrics as fast as they can, and both at once.
Also prints the sidecar's descriptors and threads, and its CPU while idle. Only
127.0.0.1 is used. ``--source DIR`` runs the sidecar of another checkout (a baseline).
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROBE_TIMEOUT = 5.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fetch(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=PROBE_TIMEOUT)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def probe(port: int, gap: float, count: int = 0, seconds: float = 0.0) -> dict[str, Any]:
    """/healthz probes gap seconds apart, count of them or for seconds: ms, failures.
    Gives up after 10 failures (each may take PROBE_TIMEOUT)."""
    latencies: list[float] = []
    failures = 0
    end = time.monotonic() + seconds
    while (len(latencies) + failures < count or time.monotonic() < end) and failures < 10:
        start = time.perf_counter()
        try:
            ok = fetch(port, "/healthz") == 200
        except OSError:
            ok = False
        elapsed = (time.perf_counter() - start) * 1000
        if ok:
            latencies.append(elapsed)
        else:
            failures += 1
        time.sleep(gap)
    latencies.sort()
    return {
        "median_ms": statistics.median(latencies) if latencies else float("nan"),
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] if latencies else float("nan"),
        "worst_ms": latencies[-1] if latencies else float("nan"),
        "failures": failures,
    }


def _scraper(port: int, threads: int, seconds: float, out: Any) -> None:
    counts = {"ok": 0, "failed": 0}
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def loop() -> None:
        while time.monotonic() < end:
            try:
                ok = fetch(port, "/metrics") == 200
            except OSError:
                ok = False
            with lock:
                counts["ok" if ok else "failed"] += 1

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    out.put(counts)


@contextmanager
def storm(port: int, scrapers: int, seconds: float) -> Iterator[dict[str, int]]:
    """scrapers concurrent /metrics loops in 5 processes for seconds; totals after."""
    processes = 5
    queue: Any = multiprocessing.Queue()
    procs = [
        multiprocessing.Process(target=_scraper, args=(port, scrapers // processes, seconds, queue))
        for _ in range(processes)
    ]
    for proc in procs:
        proc.start()
    totals = {"ok": 0, "failed": 0}
    try:
        yield totals
    finally:
        for _ in procs:
            counts = queue.get(timeout=seconds + 60)
            totals["ok"] += counts["ok"]
            totals["failed"] += counts["failed"]
        for proc in procs:
            proc.join()


def open_idle(port: int, count: int) -> list[socket.socket]:
    """Up to count idle connections; stops after 5 connects fail (a wedged server)."""
    sockets: list[socket.socket] = []
    failures = 0
    while len(sockets) < count and failures < 5:
        try:
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=2))
        except OSError:
            failures += 1
    if len(sockets) < count:
        print(f"  only {len(sockets)} of {count} idle sockets could connect")
    return sockets


def process_figures(pid: int) -> dict[str, int]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return {
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": int(fields["Threads"]),
        "rss_mb": int(fields["VmRSS"].split()[0]) // 1024,
    }


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def sidecar(source: Path, port: int, nofile: int) -> Iterator[subprocess.Popen[bytes]]:
    with tempfile.TemporaryDirectory(prefix="http-storm-") as tmp:
        models = Path(tmp, "models")
        env = {**os.environ, "LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"}
        args = [
            sys.executable,
            "-m",
            "service",
            "run",
            "--models-root",
            str(models),
            "--no-reload",
            "--metrics-addr",
            "127.0.0.1",
            "--metrics-port",
            str(port),
            "--poll-interval",
            "5",
        ]
        with open(Path(tmp, "sidecar.log"), "wb") as log:
            proc = subprocess.Popen(
                args,
                cwd=source,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=lambda: limit_nofile(nofile),
            )
            try:
                wait_ready(proc, port)
                yield proc
            finally:
                proc.terminate()
                proc.wait(30)


def limit_nofile(soft: int) -> None:
    """In the sidecar's process before exec: its soft RLIMIT_NOFILE (0: inherited)."""
    if soft:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def wait_ready(proc: subprocess.Popen[bytes], port: int) -> None:
    end = time.monotonic() + 30
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"the sidecar exited with {proc.returncode}")
        try:
            if fetch(port, "/readyz") == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit("the sidecar was not ready within 30 s")


def row(name: str, figures: dict[str, Any], extra: str = "") -> None:
    print(
        f"{name:<34} median {figures['median_ms']:7.2f} ms  p99 {figures['p99_ms']:7.2f} ms"
        f"  worst {figures['worst_ms']:7.2f} ms  failures {figures['failures']}  {extra}"
    )


def run(args: argparse.Namespace) -> None:
    port = free_port()
    with sidecar(args.source, port, args.sidecar_nofile) as proc:
        cpu = cpu_seconds(proc.pid)
        time.sleep(args.idle_seconds)
        idle_cpu = cpu_seconds(proc.pid) - cpu
        print(
            f"sidecar idle CPU: {idle_cpu:.2f} s over {args.idle_seconds:g} s; "
            f"{process_figures(proc.pid)}"
        )
        row("idle", probe(port, args.gap, count=args.probes))
        sockets = open_idle(port, args.idle_sockets)
        try:
            cpu = cpu_seconds(proc.pid)
            figures = probe(port, args.gap, count=args.probes)
            cpu = cpu_seconds(proc.pid) - cpu
            closed = sum(_closed(sock) for sock in sockets)
            row(
                f"{args.idle_sockets} idle sockets",
                figures,
                f"{process_figures(proc.pid)} closed by server: {closed}, sidecar CPU {cpu:.2f} s",
            )
        finally:
            for sock in sockets:
                sock.close()
        with storm(port, args.scrapers, args.storm_seconds) as totals:
            figures = probe(port, args.gap, seconds=args.storm_seconds)
        row(f"{args.scrapers} scrapers", figures, f"scrapes {totals}")
        sockets = open_idle(port, args.idle_sockets)
        try:
            with storm(port, args.scrapers, args.storm_seconds) as totals:
                figures = probe(port, args.gap, seconds=args.storm_seconds)
            row(
                f"{args.scrapers} scrapers + {args.idle_sockets} idle",
                figures,
                f"scrapes {totals} {process_figures(proc.pid)}",
            )
        finally:
            for sock in sockets:
                sock.close()


def _closed(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--idle-sockets", type=int, default=1000)
    parser.add_argument("--scrapers", type=int, default=50)
    parser.add_argument("--storm-seconds", type=float, default=10.0)
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--gap", type=float, default=0.02, help="seconds between probes")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument(
        "--sidecar-nofile",
        type=int,
        default=0,
        help="the sidecar's soft open-file limit (default: inherited)",
    )
    parser.add_argument(
        "--source", type=Path, default=ROOT, help="checkout whose sidecar runs (default: this one)"
    )
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * args.idle_sockets + 1024
    if soft < want:  # the sidecar inherits it: its cap stays min(256, soft / 4)
        limit = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    run(args)


if __name__ == "__main__":
    main()
