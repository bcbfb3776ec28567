"""Structured server logs: one line per event, ``key=value`` text or JSON.

Callers log an event name as the message and its fields in ``extra={"fields": {...}}``::

    log.info("stream_end", extra={"fields": {"request_id": rid, "status": "OK", "windows": 12}})

renders as ``2026-11-30T10:00:00.123Z info stream_end request_id=ab12 status=OK windows=12``
or, with ``format="json"``, as one JSON object per line. Tracebacks follow on the next lines
(text) or in an ``exc`` field (JSON).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _value(v: Any) -> str:
    text = str(v)
    if not text or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text)
    return text


class EventFormatter(logging.Formatter):
    """Renders a record as ``time level event key=value ...`` or as a JSON object."""

    def __init__(self, fmt: str = "text") -> None:
        super().__init__()
        if fmt not in ("text", "json"):
            raise ValueError(f"log format must be text or json, got {fmt!r}")
        self.json = fmt == "json"

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        fields: dict[str, Any] = dict(getattr(record, "fields", None) or {})
        event = record.getMessage()
        if self.json:
            obj = {
                "ts": ts,
                "level": record.levelname.lower(),
                "logger": record.name,
                "event": event,
                **fields,
            }
            if record.exc_info:
                obj["exc"] = self.formatException(record.exc_info)
            return json.dumps(obj, default=str)
        line = " ".join(
            [ts, record.levelname.lower(), event, *(f"{k}={_value(v)}" for k, v in fields.items())]
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure(level: str = "info", fmt: str = "text", stream: Any = None) -> None:
    """Send the ``avsentry`` loggers to ``stream`` (stderr) at ``level`` in ``fmt``."""
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(EventFormatter(fmt))
    root = logging.getLogger("avsentry")
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    root.propagate = False
