"""A damaged volume as attacker: the sidecar's own state files (intent.json,
reload-pending.json, history.jsonl) full of garbage, stray entries where versions
belong, and a stop signal in the middle of a long validation. The pass goes on from what
the volume shows, damage is kept aside and counted (state_damaged), nothing is lost, and
no command shows a traceback.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from verify import check_current

from service.naming import timestamp_name
from tests.support import SidecarProcess, base_env, run_cli, wait_for

from .support import Volume, count_case, digest, hostile, make_volume, scratch, write_files

FAILURES = "model_sidecar_promotion_failures_total"

# -- garbage for the JSON state files ------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
VALID_INTENT: dict[str, Any] = {
    "action": "promote",
    "name": "v9",
    "previous": None,
    "ready": None,
    "entries": ["m.bin"],
    "copied": False,
    "claimed": 1.0,
    "time": 1.0,
}
WRONG: dict[str, list[Any]] = {
    "action": [7, None, "delete", "PROMOTE", ""],
    "name": [5, "../x", "", None, ["v9"], "a/b"],
    "previous": [5, "../x", {}],
    "ready": [[1], [1, True], "x", 3],
    "entries": ["m.bin", [1], ["a/b"], [""], None],
    "copied": ["yes", 1, None],
    "claimed": ["now", None, True],
    "time": ["x", True, None],
}
wrong_intent = st.sampled_from(sorted(WRONG)).flatmap(
    lambda key: st.sampled_from(WRONG[key]).map(lambda v, key=key: {**VALID_INTENT, key: v})
)
VALID_PENDING: dict[str, Any] = {
    "version": "v1",
    "path": "/x",
    "previous": None,
    "rollback_allowed": True,
}
wrong_pending = st.sampled_from(
    [
        {**VALID_PENDING, "version": 5},
        {**VALID_PENDING, "version": "../v1"},
        {**VALID_PENDING, "path": None},
        {**VALID_PENDING, "previous": "a/b"},
        {**VALID_PENDING, "rollback_allowed": "yes"},
        {"version": "v1"},
        [],
    ]
)
unknown_action = (
    st.text(max_size=12)
    .filter(lambda a: a not in ("promote", "reject", "adopt", "rollback"))
    .map(lambda a: {**VALID_INTENT, "action": a})
)
HUGE = b"[" + b"0," * 600_000 + b"0]"  # valid JSON, larger than any state file may be


garbage = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    (wrong_intent | wrong_pending | unknown_action).map(lambda v: json.dumps(v).encode()),
    st.sampled_from(
        [
            b"[" * 100_000,
            b'{"a":' * 50_000,
            HUGE,
            b" " * (2 << 20) + b"{}",
            b"\xff\xfe{}",
            b"",
            b"{",
            b"[null]",
            b"null",
        ]
    ),
)
STATE_FILES = ["intent.json", "reload-pending.json"]


def damaged_copies(volume: Volume, name: str) -> list[Path]:
    return sorted((volume.models / ".sidecar").glob(f"{name}.damaged-*"))


def with_current(base: Path) -> Volume:
    volume = make_volume(base)
    write_files(volume.config.staging_dir, {"m.bin": b"one"}, manifest={"version": "v1"})
    assert volume.promoter.run_pass(wait=True).outcome == "promoted"
    return volume


@pytest.mark.parametrize(
    "name",
    ["intent.json", "reload-pending.json"],
)
def test_a_damaged_state_file_is_kept_counted_and_the_bundle_still_promoted(name: str) -> None:
    """A damaged state file is kept aside, counted once, and the staged bundle promoted."""

    @hostile(1.0, shrink=name == "intent.json")
    @given(data=garbage)
    @example(data=b"[" * 100_000)
    @example(data=json.dumps({**VALID_INTENT, "action": "explode"}).encode())
    def check(data: bytes) -> None:
        count_case("damaged_volume")
        with scratch() as base:
            volume = with_current(base)
            (volume.models / ".sidecar" / name).write_bytes(data)
            write_files(volume.config.staging_dir, {"m.bin": b"two"}, manifest={"version": "v2"})
            result = volume.promoter.run_pass(wait=True)
            assert (result.outcome, result.version) == ("promoted", "v2"), result
            assert check_current(volume.models) == "v2"
            kept = damaged_copies(volume, name)
            assert len(kept) == 1 and kept[0].read_bytes() == data
            assert volume.value(FAILURES, reason="state_damaged") == 1

    check()


@pytest.mark.parametrize("name", STATE_FILES)
def test_a_state_file_holding_null_is_kept_and_counted(name: str, tmp_path: Path) -> None:
    """`null` is not a journal entry nor a pending reload: kept aside and counted."""
    volume = with_current(tmp_path)
    (volume.models / ".sidecar" / name).write_bytes(b"null")
    assert volume.promoter.run_pass(wait=True).outcome == "idle"
    assert [p.read_bytes() for p in damaged_copies(volume, name)] == [b"null"]
    assert volume.value(FAILURES, reason="state_damaged") == 1


@pytest.mark.parametrize("name", STATE_FILES)
def test_a_damaged_state_file_never_shows_a_traceback(name: str) -> None:
    """`--once` on a volume whose state file is garbage: exit 0, no traceback, kept aside."""

    @hostile(0.2)
    @given(data=garbage)
    @example(data=b"[" * 100_000)
    def check(data: bytes) -> None:
        count_case("damaged_volume")
        with scratch() as base:
            volume = with_current(base)
            (volume.models / ".sidecar" / name).write_bytes(data)
            out = volume.cli("--once")
            assert "Traceback" not in out.stderr, out.stderr[-3000:]
            assert out.returncode == 0, out.stderr[-2000:]
            assert [p.read_bytes() for p in damaged_copies(volume, name)] == [data]
            assert "state_damaged" in out.stderr or "damaged state" in out.stderr

    check()


# -- history.jsonl with damaged lines -------------------------------------------------------

bad_lines = st.one_of(
    st.binary(max_size=200).map(lambda b: b.replace(b"\n", b"")).filter(lambda b: b.strip()),
    st.sampled_from(
        [
            b"[" * 5000,
            b'{"a":' * 3000,
            b"{}",
            b"null",
            b"[]",
            b'"promoted"',
            b'{"event": "promoted", "version": 5, "time": "t"}',
            b'{"event": "promoted", "version": "v9", "time": 7}',
            b'{"event": "rolled_back", "version": "v2", "previous": ["v1"]}',
            b'{"event": "exploded", "version": "v2"}',
            b'{"event": "promoted", "version": "v2", "duration_seconds": true}',
        ]
    ),
    json_values.map(lambda v: json.dumps(v).encode()).filter(lambda b: not b.startswith(b"{")),
)


@hostile(1.0)
@given(lines=st.lists(st.tuples(st.integers(1, 6), bad_lines), min_size=1, max_size=4))
def test_damaged_history_lines_are_set_aside_and_rollback_and_retention_still_work(
    lines: list[tuple[int, bytes]],
) -> None:
    """Damaged history lines: repaired and counted; retention and rollback still work."""
    count_case("damaged_volume")
    with scratch() as base:
        build = make_volume(base, keep_versions=100)
        for name in ("v1", "v2", "v3", "v4"):
            write_files(
                build.config.staging_dir, {"m.bin": name.encode()}, manifest={"version": name}
            )
            assert build.promoter.run_pass(wait=True).outcome == "promoted"
        history = build.models / ".sidecar" / "history.jsonl"
        good = history.read_bytes().splitlines(keepends=True)
        damaged = list(good)
        for position, line in lines:
            damaged.insert(min(position, len(damaged) - 1), line + b"\n")
        history.write_bytes(b"".join(damaged))
        volume = make_volume(base, keep_versions=2)
        write_files(volume.config.staging_dir, {"m.bin": b"v5"}, manifest={"version": "v5"})
        assert volume.promoter.run_pass(wait=True).version == "v5"
        assert volume.value(FAILURES, reason="state_damaged") == 1
        kept = sorted(history.parent.glob("history.jsonl.damaged-*"))
        assert [p.read_bytes() for p in kept] == [b"".join(damaged)]
        assert history.read_bytes().startswith(b"".join(good))
        assert sorted(os.listdir(volume.models / "versions")) == ["v4", "v5"]
        assert volume.promoter.rollback(None, "manual") == "v4"
        assert check_current(volume.models) == "v4"


# -- stray entries in versions/ -------------------------------------------------------------

STRAYS = [
    "file",
    "symlink to a version",
    "symlink outside",
    "dangling symlink",
    "fifo",
    "symlink to current",
]
NOW = 1_780_000_000.0


def make_stray(path: Path, kind: str, volume: Volume) -> None:
    if kind == "file":
        path.write_bytes(b"stray")
    elif kind == "symlink to a version":
        path.symlink_to("v1")
    elif kind == "symlink outside":
        path.symlink_to(volume.sentinel)
    elif kind == "dangling symlink":
        path.symlink_to("nowhere")
    elif kind == "symlink to current":
        path.symlink_to("../current")
    else:
        os.mkfifo(path)


@hostile(1.0)
@given(
    kind=st.sampled_from(STRAYS),
    named=st.sampled_from(["the next version", "the generated name", "another"]),
    where=st.sampled_from(["versions", "rejected"]),
)
def test_a_stray_entry_in_versions_is_moved_aside_and_the_bundle_promoted(
    kind: str, named: str, where: str
) -> None:
    """A stray file or link in versions/ or rejected/: moved aside as is, counted, promoted."""
    count_case("damaged_volume")
    with scratch() as base:
        volume = make_volume(base, clock=lambda: NOW)
        write_files(volume.config.staging_dir, {"m.bin": b"one"}, manifest={"version": "v1"})
        assert volume.promoter.run_pass(wait=True).version == "v1"
        expected = {
            "the next version": "v2",
            "the generated name": timestamp_name(NOW),
            "another": "x.y-z",
        }[named]
        stray = volume.models / where / expected
        make_stray(stray, kind, volume)
        before = os.lstat(stray).st_mode, kind.startswith("symlink") and os.readlink(stray)
        outside = digest(volume.sentinel)
        manifest = {"version": "v2"} if named == "the next version" else {}
        write_files(volume.config.staging_dir, {"m.bin": b"two"}, manifest=manifest)
        result = volume.promoter.run_pass(wait=True)
        name = "v2" if named == "the next version" else timestamp_name(NOW)
        assert (result.outcome, result.version) == ("promoted", name), result
        assert check_current(volume.models) == name
        moved = list((volume.models / ".sidecar" / "stray").iterdir())
        assert len(moved) == 1 and moved[0].name.startswith(f"{where}-{expected}-")
        assert (
            os.lstat(moved[0]).st_mode,
            kind.startswith("symlink") and os.readlink(moved[0]),
        ) == before
        assert volume.value(FAILURES, reason="state_damaged") == 1
        assert digest(volume.sentinel) == outside


# -- a stop signal during a long validation --------------------------------------------------

BIG = 2 << 30  # a sparse file: hashing its zeros still takes seconds
BIG_SHA256 = "a7c744c13cc101ed66c29f672f92455547889cc586ce6d44fe76ae824958ea51"  # 2 GiB zeros


def identities(staging: Path) -> dict[str, tuple[int, int, int, int]]:
    """Name -> (inode, mode, size, mtime) of each staged entry: unchanged means untouched."""
    out = {}
    for name in os.listdir(staging):
        st = os.lstat(staging / name)
        out[name] = (st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_stop_signal_during_validation_returns_the_bundle_and_exits_0(
    sig: signal.Signals, models: Path, start_daemon: Callable[..., SidecarProcess]
) -> None:
    """SIGTERM/SIGHUP mid-hash: exit 0, signal logged, staged entries untouched, promoted later."""
    count_case("damaged_volume")
    staging = models / "staging"
    write_files(staging, {"small.bin": b"small"}, manifest=None, ready=False)
    with open(staging / "big.bin", "wb") as fh:
        fh.truncate(BIG)
    (staging / "manifest.json").write_text(
        json.dumps({"version": "big", "files": {"big.bin": {"sha256": BIG_SHA256, "size": BIG}}})
    )
    (staging / "READY").write_bytes(b"")
    staged = identities(staging)
    daemon = start_daemon(models, "--poll-interval", "3600", "--no-watch")
    wait_for(
        lambda: os.path.lexists(models / ".sidecar" / "work" / "incoming" / "big.bin"),
        what="the claim",
    )
    time.sleep(0.3)  # hashing is under way
    sent = time.monotonic()
    code = daemon.stop(sig)
    print(f"\n{sig.name} to exit: {time.monotonic() - sent:.2f} s")
    assert code == 0, daemon.log()[-3000:]
    assert f"received {sig.name}" in daemon.log()
    assert identities(staging) == staged
    assert check_current(models) is None
    if sig != signal.SIGTERM:
        return
    later = run_cli("--once", env=base_env(models, METRICS_PORT="0"), timeout=300)
    assert later.returncode == 0, later.stderr[-3000:]
    assert check_current(models) == "big"
