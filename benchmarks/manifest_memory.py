"""Peak memory and parse time of the streaming manifest reader at its limits (issue 10).

    uv run python -m benchmarks.manifest_memory            # every case, median of 3
    uv run python -m benchmarks.manifest_memory --runs 1 --case whitespace

Each case is a manifest file written here, then parsed by a fresh interpreter that first
imports the daemon (``service.jobs.promote``), as the daemon holds it. Printed per case:
the file's size, the outcome, the interpreter's VmHWM (peak RSS) before and after
parsing in MiB, their difference, and the median parse time, wall-clock and CPU (on a
shared machine the CPU time is the steadier figure). SPEC section 3 requires the
process's peak RSS to stay <= 64 MiB at the limits; the daemon's baseline is about 30 MiB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from service.manifest_reader import DEFAULT_LIMITS

MIB = 1024 * 1024
LIMITS = DEFAULT_LIMITS
SHA = "0" * 64

# Runs in the fresh interpreter: argv[1] is the manifest, argv[2] the number of runs.
PROBE = """
import json, statistics, sys, time
from pathlib import Path
import service.jobs.promote
from service.manifest_reader import ManifestError, read_manifest_file

def hwm():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")

before, times, cpu, outcome = hwm(), [], [], ""
for _ in range(int(sys.argv[2])):
    start, start_cpu = time.perf_counter(), time.process_time()
    try:
        doc = read_manifest_file(Path(sys.argv[1]))
        outcome = "accepted: %d files" % (len(doc.files) if isinstance(doc.files, dict) else 0)
    except ManifestError as exc:
        outcome = "%s: %s" % (exc.reason, exc.detail)
    times.append(time.perf_counter() - start)
    cpu.append(time.process_time() - start_cpu)
    doc = None
print(json.dumps({"before": before, "after": hwm(), "seconds": statistics.median(times),
                  "cpu": statistics.median(cpu), "outcome": outcome}))
"""


def _object(members: Iterator[str]) -> Iterator[str]:
    yield "{"
    for index, member in enumerate(members):
        yield ("," if index else "") + member
    yield "}"


def _write(path: Path, parts: Iterator[str]) -> None:
    with path.open("w", encoding="utf-8") as out:
        for part in parts:
            out.write(part)


def _fill_to(path: Path, size: int, before_close: bool = True) -> None:
    """Pad the file with spaces before its closing brace up to size bytes."""
    data = path.read_bytes()
    pad = b" " * (size - len(data))
    path.write_bytes(data[:-1] + pad + data[-1:] if before_close else data + pad)


def long_path(index: int, size: int, wide: bool = False) -> str:
    """A distinct path of exactly size UTF-8 bytes and max_path_components components."""
    head = ("\U0001f600" if wide else "") + f"{index:08d}"
    dirs = "d/" * (LIMITS.max_path_components - 1)
    tail = size - len(head.encode()) - len(dirs)
    return head + dirs + "f" * tail


def entries(count: int, path_bytes: int, extra: str = "", wide: bool = False) -> Iterator[str]:
    for index in range(count):
        path = long_path(index, path_bytes, wide)
        yield json.dumps(path) + f':{{"sha256":"{SHA}","size":{index}{extra}}}'


def case_whitespace(path: Path) -> None:
    """A small valid manifest padded with whitespace to the byte limit."""
    _write(path, _object(iter(['"version":"1.0"', '"files":{"a":{"sha256":"' + SHA + '"}}'])))
    _fill_to(path, LIMITS.max_bytes)


def case_huge_string(path: Path) -> None:
    """One ignored string value of almost the byte limit."""
    body = "x" * (LIMITS.max_bytes - 64)
    _write(path, iter(['{"version":"1.0","comment":"', body, '"}']))


def case_escaped_string(path: Path) -> None:
    """One ignored string made of escapes and 4-byte characters."""
    unit = "\\n\\u00e9\\ud83d\\ude00\U0001f600"
    body = unit * ((LIMITS.max_bytes - 64) // len(unit.encode()))
    _write(path, iter(['{"comment":"', body, '"}']))


def case_max_entries(path: Path) -> None:
    """max_entries entries with max-length paths, padded by ignored keys to the byte limit."""
    per_entry = LIMITS.max_bytes // LIMITS.max_entries - LIMITS.max_path_bytes - 120
    extra = ',"note":"' + "n" * per_entry + '"'
    files = "".join(_object(entries(LIMITS.max_entries, LIMITS.max_path_bytes, extra)))
    _write(path, _object(iter(['"version":"1.0"', '"files":' + files])))
    _fill_to(path, LIMITS.max_bytes)


def wide_entries_that_fit() -> int:
    """How many entries of wide max-length paths stay within max_held_bytes."""
    from service.manifest_reader import _DICT_SLOT_BYTES, FileEntry

    key = long_path(0, LIMITS.max_path_bytes, wide=True)
    cost = (
        sys.getsizeof(key)
        + _DICT_SLOT_BYTES
        + sys.getsizeof(FileEntry(SHA, 10**9))
        + sys.getsizeof(SHA)
        + sys.getsizeof(10**9)
    )
    return LIMITS.max_held_bytes // cost - 1


def case_wide_paths(path: Path) -> None:
    """As many paths mixing ASCII and U+1F600 (4 bytes a character) as max_held_bytes holds."""
    files = "".join(_object(entries(wide_entries_that_fit(), LIMITS.max_path_bytes, wide=True)))
    _write(path, _object(iter(['"files":' + files])))


def case_deep(path: Path) -> None:
    """Values nested max_nesting deep up to max_containers, padded by strings to the byte limit."""
    levels = LIMITS.max_nesting - 2
    count = LIMITS.max_containers // levels - 1
    pad = LIMITS.max_bytes // count - 2 * levels - 3
    value = "[" * levels + '"' + "p" * pad + '"' + "]" * levels
    _write(path, iter(['{"x":[', ",".join([value] * count), "]}"]))


def case_containers(path: Path) -> None:
    """max_containers one-element arrays: the most Python work per byte the limits allow."""
    count = LIMITS.max_containers - 2
    _write(path, iter(['{"x":[', ",".join(["[0]"] * count), "]}"]))
    _fill_to(path, LIMITS.max_bytes)


def case_escaped_keys(path: Path) -> None:
    """max_keys top-level keys spelled with escapes (each read one by one), to the byte limit."""
    members = (f'"\\u0061{i:07d}":0' for i in range(LIMITS.max_keys))
    _write(path, _object(members))
    _fill_to(path, LIMITS.max_bytes)


def case_beyond_keys(path: Path) -> None:
    """Two million escaped top-level keys: refused at key max_keys + 1."""
    count = LIMITS.max_bytes // 19 - 1
    _write(path, _object(f'"\\u0061{i:07d}":0' for i in range(count)))


def case_many_keys(path: Path) -> None:
    """An ignored object of about two million members."""
    count = LIMITS.max_bytes // 16 - 1
    inner = "".join(_object(f'"k{i:07d}":{i % 10}' for i in range(count)))
    _write(path, _object(iter(['"ignored":' + inner])))


def case_dense_array(path: Path) -> None:
    """An ignored array of about 16 million zeros."""
    count = LIMITS.max_bytes // 2 - 16
    _write(path, iter(['{"x":[', "0," * count, "0]}"]))


def case_dense_empties(path: Path) -> None:
    """An ignored array of about 11 million empty arrays: the slowest shape."""
    count = LIMITS.max_bytes // 3 - 16
    _write(path, iter(['{"x":[', "[]," * count, "[]]}"]))


def case_beyond_entries(path: Path) -> None:
    """200,000 entries (issue 10): rejected at entry max_entries + 1."""
    files = "".join(_object(entries(200_000, 40)))
    _write(path, _object(iter(['"files":' + files])))


CASES: dict[str, Callable[[Path], None]] = {
    "whitespace": case_whitespace,
    "huge_string": case_huge_string,
    "escaped_string": case_escaped_string,
    "max_entries": case_max_entries,
    "wide_paths": case_wide_paths,
    "deep": case_deep,
    "containers": case_containers,
    "escaped_keys": case_escaped_keys,
    "many_keys": case_many_keys,
    "dense_array": case_dense_array,
    "dense_empties": case_dense_empties,
    "beyond_entries": case_beyond_entries,
    "beyond_keys": case_beyond_keys,
}


def measure(path: Path, runs: int) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(path), str(runs)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--case", choices=sorted(CASES), action="append")
    args = parser.parse_args()
    print(
        f"{'case':<15} {'MiB':>6} {'hwm0':>6} {'hwm1':>6} {'delta':>6} {'s':>6} {'cpu s':>6}"
        "  outcome"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.case or CASES:
            path = Path(tmp) / f"{name}.json"
            CASES[name](path)
            r = measure(path, args.runs)
            before, after = int(r["before"]) / MIB, int(r["after"]) / MIB  # type: ignore[call-overload]
            print(
                f"{name:<15} {path.stat().st_size / MIB:6.1f} {before:6.1f} {after:6.1f} "
                f"{after - before:6.1f} {r['seconds']:6.2f} {r['cpu']:6.2f}  "
                f"{str(r['outcome'])[:60]}"
            )
            path.unlink()


if __name__ == "__main__":
    main()
