"""Logs as an operator reads them: structured fields, the start line, no scheduler noise."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from service.config import Config
from service.logsetup import JsonFormatter, TextFormatter, setup_logging
from service.startline import start_message
from tests.support import SidecarProcess, wait_for


@pytest.fixture
def captured() -> Iterator[Callable[[], str]]:
    """setup_logging("INFO", "text") with its handler writing to a buffer; the buffer's text."""
    saved = logging.getLogger().handlers[:], logging.getLogger().level
    buffer = io.StringIO()
    setup_logging("INFO", "text")
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    yield buffer.getvalue
    logging.getLogger().handlers[:], level = saved
    logging.getLogger().setLevel(level)


def _record(message: str, fields: dict[str, object] | None = None) -> logging.LogRecord:
    record = logging.LogRecord("service.app", logging.INFO, __file__, 1, message, None, None)
    if fields is not None:
        record.fields = fields
    return record


def test_json_fields_are_top_level_keys() -> None:
    """Fields passed as extra={"fields": ...} become top-level keys of the JSON line."""
    line = JsonFormatter().format(
        _record("hello", {"models_root": "/m", "keep_versions": 3, "reload_url": None})
    )
    entry = json.loads(line)
    assert entry["message"] == "hello"
    assert (entry["models_root"], entry["keep_versions"], entry["reload_url"]) == ("/m", 3, None)


def test_json_fields_never_replace_the_standard_keys() -> None:
    """A field named like a standard key (message, level) does not overwrite it."""
    entry = json.loads(JsonFormatter().format(_record("real", {"message": "fake", "level": "x"})))
    assert (entry["message"], entry["level"]) == ("real", "info")


def test_text_fields_are_key_value_pairs_without_reprs() -> None:
    """In text, fields follow the message as key=value; None is null, not a Python repr."""
    line = TextFormatter().format(
        _record("hello", {"a": "plain", "b": None, "c": "two words", "d": False, "e": 1.5})
    )
    assert line.endswith(' hello a=plain b=null c="two words" d=false e=1.5')


def test_scheduler_skipped_run_warning_never_reaches_the_log(captured: Callable[[], str]) -> None:
    """A real APScheduler that skips a run (max_instances reached) logs nothing about it,
    while its other warnings still get through."""
    from apscheduler.events import EVENT_JOB_MAX_INSTANCES
    from apscheduler.schedulers.background import BackgroundScheduler

    started, release, skipped = threading.Event(), threading.Event(), threading.Event()
    scheduler = BackgroundScheduler(timezone=UTC)
    scheduler.add_listener(lambda _event: skipped.set(), EVENT_JOB_MAX_INSTANCES)

    def job() -> None:
        started.set()
        release.wait(30)

    scheduler.add_job(
        job, "interval", seconds=3600, id="j", max_instances=1, next_run_time=datetime.now(UTC)
    )
    scheduler.start()
    try:
        assert started.wait(10)
        scheduler.modify_job("j", next_run_time=datetime.now(UTC))
        assert skipped.wait(10), "APScheduler did not skip the run"
        logging.getLogger("apscheduler.scheduler").warning("another scheduler warning")
    finally:
        release.set()
        scheduler.shutdown()
    text = captured()
    assert "another scheduler warning" in text
    assert "maximum number of running instances" not in text


def _config(**overrides: object) -> Config:
    return dataclasses.replace(Config(), **overrides)  # type: ignore[arg-type]


def test_start_line_with_the_defaults() -> None:
    """The default configuration reads as one sentence."""
    line, _fields = start_message(_config(), "v1")
    assert line == (
        "watching /models/staging, polling every 30 s, current v1, reloading POST "
        "http://127.0.0.1:8000/reload, metrics on 0.0.0.0:9177"
    )


def test_start_line_when_things_are_off() -> None:
    """No watch, no reload, no metrics server and no current version are said in words."""
    line, _fields = start_message(
        _config(watch=False, reload_url=None, metrics_port=0, poll_override=5.0), None
    )
    assert line == (
        "polling /models/staging every 5 s, no current version, reloading "
        "disabled, metrics disabled"
    )
    assert "None" not in line


def test_start_line_fields_are_the_redacted_configuration() -> None:
    """The fields are Config.redacted(): every setting, the token never."""
    config = _config(reload_token="s3cret-token")
    line, fields = start_message(config, "v1")
    assert fields == config.redacted()
    assert "s3cret-token" not in line + json.dumps(fields, default=str)


def test_start_line_escapes_control_characters() -> None:
    """A version name with an ANSI escape or newline is printed escaped."""
    line, _fields = start_message(_config(), "v1\x1b[31m\nx")
    assert "current v1\\x1b[31m\\x0ax," in line


def test_daemon_logs_the_start_line_with_fields_in_json(
    models: Path, start_daemon: Callable[..., SidecarProcess]
) -> None:
    """The real daemon's first JSON line is the start sentence with the configuration as
    top-level keys."""
    daemon = start_daemon(models, "--poll-interval", "60")
    daemon.wait_ready()
    wait_for(lambda: "watching" in daemon.log(), what="the start line")
    assert daemon.stop() == 0
    entry = next(json.loads(line) for line in daemon.log().splitlines() if "watching" in line)
    assert entry["message"].startswith(
        f"watching {models / 'staging'}, polling every 60 s, "
        "no current version, reloading disabled, metrics on"
    )
    assert entry["models_root"] == str(models)
    assert entry["poll_override"] == 60
