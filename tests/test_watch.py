"""Watch mode: the inotify event parser, a real watch, and a daemon that never polls."""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from pathlib import Path

from service.watch import IN_CREATE, IN_IGNORED, IN_MOVED_TO, Watch, parse_events
from tests.support import ReloadServer, SidecarProcess, base_env, run_cli, wait_for, write_bundle

EVENT = struct.Struct("iIII")


def event(wd: int, mask: int, name: bytes) -> bytes:
    padded = name + b"\0" * (16 - len(name) % 16) if name else b""
    return EVENT.pack(wd, mask, 0, len(padded)) + padded


def test_ready_created_in_staging_is_reported() -> None:
    """READY created (or renamed) in the staging watch is a ready event."""
    assert parse_events(event(1, IN_CREATE, b"READY"), 1, 2).ready
    assert parse_events(event(1, IN_MOVED_TO, b"READY"), 1, 2).ready


def test_other_names_and_other_watches_are_not_ready() -> None:
    """A file other than READY, or READY in the state watch, is not a ready event."""
    buffer = event(1, IN_CREATE, b"model.onnx") + event(2, IN_CREATE, b"READY")
    assert not parse_events(buffer, 1, 2).ready


def test_journal_renamed_into_state_is_a_command_event() -> None:
    """A journal or pending reload renamed into .sidecar/ says a command ran."""
    assert parse_events(event(2, IN_MOVED_TO, b"intent.json"), 1, 2).state
    assert parse_events(event(2, IN_MOVED_TO, b"reload-pending.json"), 1, 2).state
    assert not parse_events(event(2, IN_MOVED_TO, b"history.jsonl"), 1, 2).state


def test_ignored_watch_is_reported_lost() -> None:
    """IN_IGNORED (the directory went away) marks that watch as lost."""
    buffer = event(1, IN_CREATE, b"x") + event(1, IN_IGNORED, b"")
    assert parse_events(buffer, 1, 2).lost == frozenset({1})


def test_truncated_buffer_is_parsed_up_to_the_last_whole_event() -> None:
    """A buffer cut in the middle of an event yields the events before it."""
    buffer = event(1, IN_CREATE, b"READY") + b"\x01\x00"
    assert parse_events(buffer, 1, 2).ready


def test_real_watch_calls_back_when_ready_appears(tmp_path: Path) -> None:
    """A real inotify watch calls on_ready when READY is created in staging."""
    staging, state = tmp_path / "staging", tmp_path / "state"
    staging.mkdir()
    state.mkdir()
    woken = threading.Event()
    watch = Watch(staging, state, woken.set, lambda: None)
    try:
        (staging / "READY").write_text("")
        assert woken.wait(20)
    finally:
        watch.close()


def test_daemon_that_never_polls_promotes_when_ready_appears(
    models: Path, start_daemon: Callable[..., SidecarProcess]
) -> None:
    """With a one-hour interval, a bundle staged after start is promoted by the watch."""
    daemon = start_daemon(models, "--poll-interval", "3600")
    daemon.wait_ready()
    write_bundle(models / "staging", {"model.bin": b"v1"}, version="v1")
    wait_for(lambda: (models / "current").resolve().name == "v1", 30, "the watch to promote")


def test_daemon_delivers_a_command_rollback_without_polling(
    models: Path, start_daemon: Callable[..., SidecarProcess], reload_server: ReloadServer
) -> None:
    """A CLI rollback's reload is sent by the daemon at once, not at its next poll."""
    daemon = start_daemon(
        models, "--poll-interval", "3600", RELOAD_URL=reload_server.url + "/reload"
    )
    daemon.wait_ready()
    for version in ("v1", "v2"):
        write_bundle(models / "staging", {"model.bin": version.encode()}, version=version)
        wait_for(lambda v=version: (models / "current").resolve().name == v, 30, version)
    wait_for(lambda: len(reload_server.requests) == 2, 30, "two reloads")
    result = run_cli("rollback", env=base_env(models))
    assert result.returncode == 0, result.stderr
    assert "delivers the reload" in result.stdout
    wait_for(lambda: len(reload_server.requests) == 3, 30, "the rollback's reload")
    assert reload_server.requests[-1].json()["version"] == "v1"
