"""`forecaster-sidecar status` as a user runs it: the real CLI on a real volume."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import ROOT, ReloadServer, SidecarProcess, base_env, run_cli, write_bundle

UTC_AGE = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \((?:\d+ (?:d|h|min) )?(?:\d+ (?:h|min|s) )?ago\)"
LINE_PREFIXES = (
    "root:",
    "current:",
    "versions:",
    "  ",
    "daemon:",
    "reloading:",
    "reload:",
    "staging:",
    "rejected:",
    "damaged:",
    "interrupted:",
    "last events",
)


def _promote(models: Path, *versions: str, **env: str) -> dict[str, str]:
    environ = base_env(models, **env)
    for version in versions:
        write_bundle(models / "staging", {"m": version.encode()}, version=version)
        run_cli("--once", env=environ)
    return environ


def _status(models: Path, *args: str) -> subprocess.CompletedProcess[str]:
    out = run_cli("status", *args, env=base_env(models))
    assert "Traceback" not in out.stderr, out.stderr
    return out


def _json(models: Path) -> dict[str, Any]:
    out = _status(models, "--json")
    assert out.returncode == 0, out.stderr
    state: dict[str, Any] = json.loads(out.stdout)
    return state


def test_missing_root_exits_2_naming_it(tmp_path: Path) -> None:
    """status on a root that does not exist exits 2 naming it, and creates nothing."""
    root = tmp_path / "absent"
    out = _status(root)
    assert out.returncode == 2 and str(root) in out.stderr
    assert not root.exists()


def test_root_that_is_a_file_exits_2(tmp_path: Path) -> None:
    """status on a root that is a plain file exits 2 naming it."""
    root = tmp_path / "file"
    root.write_text("")
    out = _status(root)
    assert out.returncode == 2 and str(root) in out.stderr and "not a directory" in out.stderr


def test_names_the_root(models: Path) -> None:
    """The first line names the root status acts on."""
    out = _status(models)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == f"root:      {models}"


def test_versions_in_promotion_order_with_current_marked(models: Path) -> None:
    """Versions are listed oldest promotion first (not by name), current marked with *."""
    _promote(models, "zeta", "alpha", "mid")
    lines = _status(models).stdout.splitlines()
    rows = [line for line in lines if re.match(r"^  [ *] \S", line)]
    names = [row[4:].split()[0] for row in rows]
    assert names == ["zeta", "alpha", "mid"]
    assert [row[2] for row in rows] == [" ", " ", "*"]


def test_versions_show_promotion_time_age_and_size(models: Path) -> None:
    """Each version line has its promotion time in UTC with its age, its size and files."""
    _promote(models, "v1")
    size = sum(p.stat().st_size for p in (models / "versions" / "v1").rglob("*"))
    row = next(line for line in _status(models).stdout.splitlines() if "* v1" in line)
    assert re.fullmatch(rf"  \* v1  {UTC_AGE}, {size} B in 2 files", row), row


def test_pending_reload_and_its_failure_are_shown(
    models: Path, reload_server: ReloadServer
) -> None:
    """A reload that failed stays pending; status says since when and why it failed."""
    reload_server.default = 500
    _promote(models, "v1", RELOAD_URL=reload_server.url, RELOAD_RETRIES="0")
    text = _status(models).stdout
    assert re.search(
        rf"(?m)^reload:    pending for v1 since {UTC_AGE}; "
        rf"last attempt failed \(http_status\) at {UTC_AGE}$",
        text,
    ), text
    pending = _json(models)["pending_reload"]
    assert (pending["version"], pending["last_failure"]["reason"]) == ("v1", "http_status")


def test_ready_bundle_is_shown_as_waiting(models: Path) -> None:
    """A staged bundle with READY is reported as waiting, with its size and version."""
    write_bundle(models / "staging", {"m": b"abc"}, version="v9")
    text = _status(models).stdout
    assert re.search(
        r"(?m)^staging:   .*: READY bundle waiting \(2 files, \d+ B, version v9\)$", text
    ), text
    assert _json(models)["staging"]["state"] == "ready"


def test_staging_without_ready_is_a_producer_writing(models: Path) -> None:
    """Files in staging without READY are reported as a producer at work."""
    write_bundle(models / "staging", {"part-1": b"x", "part-2": b"y"}, ready=False)
    text = _status(models).stdout
    assert re.search(
        r"(?m)^staging:   .*: 3 entries without READY .*a producer is writing$", text
    ), text
    assert _json(models)["staging"]["state"] == "writing"


def test_without_a_daemon_reloading_is_unknown(models: Path) -> None:
    """With no daemon on the volume, status says so and cannot know the reload URL."""
    _promote(models, "v1")
    text = _status(models).stdout
    assert "\nreloading: unknown: no daemon running\n" in text
    assert _json(models)["daemon"]["running"] is False


def test_a_running_daemon_is_named_with_its_reload_url(
    models: Path, start_daemon: Callable[..., SidecarProcess], reload_server: ReloadServer
) -> None:
    """With the daemon running, status names its pid and the URL it reloads."""
    daemon = start_daemon(models, "--poll-interval", "60", RELOAD_URL=reload_server.url)
    daemon.wait_ready()
    text = _status(models).stdout
    assert re.search(rf"(?m)^daemon:    pid {daemon.proc.pid} on \S+, holds the lock", text), text
    assert f"\nreloading: POST {reload_server.url}\n" in text
    state = _json(models)["daemon"]
    assert (state["running"], state["pid"], state["reload"]["url"]) == (
        True,
        daemon.proc.pid,
        reload_server.url,
    )
    assert daemon.stop() == 0


def test_times_are_utc_with_their_age(models: Path) -> None:
    """Every event line shows its time in UTC and its age."""
    _promote(models, "v1", "v2")
    lines = _status(models).stdout.split("last events:\n")[1].splitlines()
    assert len(lines) == 2
    assert all(re.match(rf"  {UTC_AGE} promoted v\d", line) for line in lines), lines


# -- damaged state --------------------------------------------------------------------------


def test_damaged_state_files_are_reported_not_raised(models: Path) -> None:
    """Garbage, deep nesting and a damaged history line: exit 0, named, good lines kept."""
    _promote(models, "v1", "v2")
    state = models / ".sidecar"
    (state / "reload-pending.json").write_bytes(b"\x00\xffnot json{")
    history = state / "history.jsonl"
    history.write_bytes(history.read_bytes() + b"{damaged\n" + b"[" * 30_000 + b"\n")
    (models / "rejected" / "r1").mkdir(parents=True)
    (models / "rejected" / "r1" / "REJECTION.json").write_bytes(b"[" * 100_000)
    out = _status(models)
    assert out.returncode == 0, out.stderr
    assert re.search(r"(?m)^damaged:   .*reload-pending\.json: ", out.stdout)
    assert re.search(r"(?m)^damaged:   .*history\.jsonl: 2 damaged lines skipped$", out.stdout)
    assert re.search(r"(?m)^damaged:   .*r1/REJECTION\.json: ", out.stdout)
    assert "promoted v2 previous=v1" in out.stdout


def test_history_that_is_a_directory_is_reported(models: Path) -> None:
    """A history path that cannot be read is reported as damaged, exit 0."""
    (models / ".sidecar" / "history.jsonl").mkdir(parents=True)
    out = _status(models)
    assert out.returncode == 0, out.stderr
    assert re.search(r"(?m)^damaged:   .*history\.jsonl: ", out.stdout)


# -- hostile names ------------------------------------------------------------------------------

PIECES = [
    b"\x1b[31m",
    b"\x1b]0;title\x07",
    b"\n",
    b"\r",
    b"\t",
    b"\xff",
    b"\xc3",
    b"\x7f",
    b"\xe2\x80\xae",
    b"\\",
    b" ",
    b"v",
    b"\xc2\x9b",
]
NAMES = (
    st.lists(
        st.one_of(st.sampled_from(PIECES), st.binary(min_size=1, max_size=4)),
        min_size=1,
        max_size=6,
    )
    .map(b"".join)
    .filter(lambda n: b"/" not in n and b"\x00" not in n and n not in (b".", b".."))
)


def _hostile_volume(root: Path, name: bytes) -> None:
    broot = os.fsencode(root)
    for sub in (b"versions", b"rejected", b"staging", b".sidecar"):
        os.makedirs(os.path.join(broot, sub), exist_ok=True)
    os.mkdir(os.path.join(broot, b"versions", name))
    os.mkdir(os.path.join(broot, b"versions", b"plain"))
    with open(os.path.join(broot, b"versions", name, name), "wb") as fh:
        fh.write(b"x")
    os.symlink(b"versions/" + name, os.path.join(broot, b"current"))
    os.mkdir(os.path.join(broot, b"rejected", name))
    text = name.decode("utf-8", "surrogateescape")
    detail = name.decode("latin-1")
    with open(os.path.join(broot, b"rejected", name, b"REJECTION.json"), "w") as fh:
        json.dump({"reason": detail, "detail": detail, "time": detail}, fh)
    with open(os.path.join(broot, b"staging", name), "wb") as fh:
        fh.write(b"partial")
    events = [
        {"event": "promoted", "time": "2026-12-01T00:00:00Z", "version": "plain"},
        {"event": "promoted", "time": detail, "version": detail, "previous": detail},
        {
            "event": "reload",
            "time": "2026-12-01T00:00:01Z",
            "version": text,
            "outcome": "failure",
            "reason": detail,
        },
    ]
    lines = [json.dumps(e, ensure_ascii=False).encode("utf-8", "surrogateescape") for e in events]
    with open(os.path.join(broot, b".sidecar", b"history.jsonl"), "wb") as fh:
        fh.write(b"\n".join(lines) + b"\n")
    with open(os.path.join(broot, b".sidecar", b"reload-pending.json"), "wb") as fh:
        fh.write(json.dumps({"version": detail, "path": detail}).encode())


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=NAMES)
def test_hostile_names_are_escaped(name: bytes) -> None:
    """Control characters, newlines, ANSI escapes and bad UTF-8 in any name never reach
    the terminal raw: every line is printable, known, and has no trailing space."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "models"
        _hostile_volume(root, name)
        env = base_env(root)
        out = subprocess.run(
            [sys.executable, "-m", "service", "status"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        text = out.stdout.decode("utf-8")  # strict: nothing undecodable is printed
        assert text.endswith("\n")
        for line in text[:-1].split("\n"):
            assert line.isprintable(), repr(line)
            assert line == line.rstrip(), repr(line)
            assert line.startswith(LINE_PREFIXES), repr(line)
        raw = subprocess.run(
            [sys.executable, "-m", "service", "status", "--json"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            timeout=60,
            check=False,
        )
        state = json.loads(raw.stdout.decode("utf-8"))
        expected = (
            name.decode("utf-8", "surrogateescape")
            .encode("utf-8", "surrogateescape")
            .decode("utf-8", "backslashreplace")
        )
        assert state["current"]["version"] == expected
        assert expected in [v["name"] for v in state["versions"]]


# -- the JSON schema ------------------------------------------------------------------------------

SCHEMA_KEYS: dict[str, set[str]] = {
    "": {
        "schema",
        "time",
        "root",
        "staging_dir",
        "current_link",
        "current",
        "previous",
        "versions",
        "daemon",
        "pending_reload",
        "staging",
        "rejected",
        "interrupted",
        "last_events",
        "problems",
    },
    "current": {"version", "link"},
    "versions[]": {"name", "current", "promoted", "age_seconds", "files", "size_bytes"},
    "daemon": {"running", "pid", "host", "started", "reload"},
    "daemon.reload": {"configured", "url", "method"},
    "pending_reload": {"version", "since", "age_seconds", "last_failure"},
    "pending_reload.last_failure": {"time", "reason"},
    "staging": {"state", "entries", "files", "size_bytes", "version"},
    "rejected[]": {"name", "reason", "detail", "time"},
    "problems[]": {"path", "error"},
}


def _at(state: dict[str, Any], path: str) -> dict[str, Any]:
    value: Any = state
    for part in filter(None, path.replace("[]", "").split(".")):
        value = value[part]
    return value[0] if path.endswith("[]") else value


def _full_volume(models: Path, reload_server: ReloadServer) -> None:
    reload_server.default = 500
    _promote(models, "v1", "v2", RELOAD_URL=reload_server.url, RELOAD_RETRIES="0")
    write_bundle(models / "staging", {}, manifest=None)
    run_cli("--once", env=base_env(models))
    write_bundle(models / "staging", {"m": b"3"}, version="v3")
    (models / ".sidecar" / "reload-pending.json").write_text(
        json.dumps({"version": "v2", "path": "x", "previous": "v1"})
    )
    (models / ".sidecar" / "intent.json").write_bytes(b"garbage")
    (models / "rejected" / "r9").mkdir()
    (models / "rejected" / "r9" / "REJECTION.json").write_bytes(b"{")


def test_json_schema_is_pinned(models: Path, reload_server: ReloadServer) -> None:
    """status --json has schema forecaster-sidecar/status/v1 with exactly these keys."""
    _full_volume(models, reload_server)
    state = _json(models)
    assert state["schema"] == "forecaster-sidecar/status/v1"
    for path, keys in SCHEMA_KEYS.items():
        assert set(_at(state, path)) == keys, path
    assert state["current"] == {"version": "v2", "link": "version"}
    assert [v["name"] for v in state["versions"]] == ["v1", "v2"]
    # rejected bundles by time, unknown time first
    assert [r["reason"] for r in state["rejected"]] == [None, "empty_bundle"]
    assert state["interrupted"] is True


def test_json_schema_is_documented() -> None:
    """docs/status-schema.md names the schema and documents every key of it."""
    doc = (ROOT / "docs" / "status-schema.md").read_text()
    assert "forecaster-sidecar/status/v1" in doc
    for path, keys in SCHEMA_KEYS.items():
        for key in keys:
            assert f"`{key}`" in doc, (path, key)
