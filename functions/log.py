"""One JSON object per log line, in the shape Cloud Logging reads from stdout.

Callers pass structured fields with `extra={"json_fields": {...}}` (the key google-cloud-logging's
handler reads too). Per-invocation keys (event id, object, operation) live in a ContextVar so
every line of one invocation carries them. Only names, ids and counts are logged: never DICOM
tag values (patient data).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

_CONTEXT: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("log_context", default=None)
_SEVERITY = {"DEBUG": "DEBUG", "INFO": "INFO", "WARNING": "WARNING", "ERROR": "ERROR", "CRITICAL": "CRITICAL"}
# The values LOG_LEVEL accepts, in any case (settings validates with `parse_level` too).
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEFAULT_LEVEL = "INFO"


class JsonFormatter(logging.Formatter):
    """Formats a record as compact JSON with `severity`, `message`, `time` and the fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": _SEVERITY.get(record.levelname, "DEFAULT"),
            "message": record.getMessage(),
            "time": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "logger": record.name,
        }
        entry.update(_CONTEXT.get() or {})
        fields = getattr(record, "json_fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            # Error Reporting reads `stack_trace`.
            entry["stack_trace"] = "".join(traceback.format_exception(*record.exc_info))
        return json.dumps({k: v for k, v in entry.items() if v is not None}, default=str, ensure_ascii=False)


def parse_level(raw: str) -> str:
    """A LOG_LEVEL value as `logging` takes it: one of `LEVELS`, any case, surrounding blanks ignored.

    Raises:
        ValueError: not one of `LEVELS`.
    """
    level = raw.strip().upper()
    if level not in LEVELS:
        raise ValueError(f"expected {', '.join(LEVELS[:-1])} or {LEVELS[-1]} (any case)")
    return level


def level_or_default(raw: str | None) -> str:
    """`parse_level(raw)`, or `DEFAULT_LEVEL` when `raw` is empty or invalid.

    Logging is set up before the settings are read, so that their error is logged as JSON too; a
    bad LOG_LEVEL must not crash that step. The settings then reject it, naming the variable.
    """
    try:
        return parse_level(raw or DEFAULT_LEVEL)
    except ValueError:
        return DEFAULT_LEVEL


def configure(level: str = DEFAULT_LEVEL) -> None:
    """Installs the JSON handler on the root logger once (idempotent across warm invocations).

    Raises:
        ValueError: `level` is not one of `LEVELS` (in any case).
    """
    level = parse_level(level)
    root = logging.getLogger()
    if not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
    root.setLevel(level)
    # The Google clients log every retry at INFO; ours already say what matters.
    for noisy in ("google", "urllib3", "grpc"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


@contextlib.contextmanager
def context(**fields: Any) -> Iterator[None]:
    """Adds fields to every log line written inside the block (per thread / per request)."""
    merged = dict(_CONTEXT.get() or {})
    merged.update({k: v for k, v in fields.items() if v is not None})
    token = _CONTEXT.set(merged)
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def fields(**values: Any) -> dict[str, Any]:
    """Shorthand for `extra=` of a logging call: `log.info("x", extra=fields(count=3))`."""
    return {"json_fields": values}
