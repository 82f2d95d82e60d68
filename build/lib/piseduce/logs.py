"""Logging: one line per event, with node, reservation and step when known; JSON for shippers."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
from typing import Any

# `action` is the process name (deploy, destroy...): `process` is taken by LogRecord (the PID), and
# passing it in `extra` raises KeyError.
CONTEXT_FIELDS = ("node", "reservation", "step", "action", "agent")


# The users' API tokens (webui/tokens.py): kept out of every line, whatever carried them (a token
# sent in a query string reaches the access log's URL).
TOKEN_RE = re.compile(r"pst_[A-Za-z0-9_-]{8,}")
# The calendar feed's secret is the path itself (GET /calendar/pcf_….ics, webui/calendar_feed.py):
# uvicorn's access line would keep it whole. It is the only route with a secret in its URL.
FEED_SECRET_RE = re.compile(r"pcf_[A-Za-z0-9_-]+")


def message_of(record: logging.LogRecord) -> str:
    return FEED_SECRET_RE.sub("pcf_…", TOKEN_RE.sub("pst_[redacted]", record.getMessage()))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = dt.datetime.fromtimestamp(record.created, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        ctx = " ".join(
            f"{k}={getattr(record, k)}" for k in CONTEXT_FIELDS if getattr(record, k, None) is not None
        )
        line = f"{ts} {record.levelname:<7} {record.name}: {message_of(record)}"
        if ctx:
            line += f" [{ctx}]"
        if record.exc_info:
            line += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message_of(record),
        }
        for k in CONTEXT_FIELDS:
            v = getattr(record, k, None)
            if v is not None:
                out[k] = v
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def configure(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's own logging config gives its loggers handlers that stop propagation: their lines
    # would then bypass this handler, and with it the redaction of tokens in URLs.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        server_log = logging.getLogger(name)
        server_log.handlers[:] = []
        server_log.propagate = True
    # Never let HTTP client libraries log request headers (they may carry credentials).
    for noisy in ("httpx", "httpcore", "asyncssh", "pysnmp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Alembic names each of its plugins at every start; its migrations' lines stay.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
