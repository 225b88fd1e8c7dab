"""Logging: text on a terminal, JSON lines elsewhere (LOG_FORMAT=auto).

Structured data travels as ``extra={"fields": {...}}``: the JSON formatter emits each
field as a top-level key, the text formatter appends ``key=value`` pairs, so neither
ever prints a Python repr.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
RESERVED = ("time", "level", "logger", "message", "exception")
# APScheduler warns each time a wake-up (inotify) finds the pass still running; the job
# runs again when it ends, so the warning only alarms operators.
SKIPPED_RUN = "maximum number of running instances reached"


def record_fields(record: logging.LogRecord) -> Mapping[str, object]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, Mapping) else {}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({str(k): v for k, v in record_fields(record).items() if k not in RESERVED})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def text_value(value: object) -> str:
    """A value as logfmt shows it: bare when it is a plain word, else JSON."""
    if (
        isinstance(value, str)
        and value
        and not any(c in value for c in ' "=\\')
        and value.isprintable()
    ):
        return value
    return json.dumps(value, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        pairs = " ".join(f"{k}={text_value(v)}" for k, v in record_fields(record).items())
        return f"{line} {pairs}" if pairs else line


class DropSkippedRuns(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith("apscheduler") and SKIPPED_RUN in record.getMessage())


def setup_logging(level: str, log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    use_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    handler.addFilter(DropSkippedRuns())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    scheduler_log = logging.getLogger("apscheduler.scheduler")
    if not any(isinstance(f, DropSkippedRuns) for f in scheduler_log.filters):
        scheduler_log.addFilter(DropSkippedRuns())
    # APScheduler logs every run at INFO; at a 1 s interval that is noise.
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, root.level))
    # urllib3 logs each retry; the sidecar logs the outcome of the whole reload once.
    logging.getLogger("urllib3").setLevel(max(logging.ERROR, root.level))
