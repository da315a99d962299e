"""Logs: one line format for every logger (text or JSON), each line carrying the id of the request
it is about, and the access log.

The request id lives in a context variable, set by the HTTP layer for the length of one request
(`bertserve.service.api.middleware.RequestIdMiddleware`); every record logged while it is set (in
the request's task and the tasks it starts) carries it as `request_id`. Work that serves many
requests at once (a batch) logs without one. Nothing here imports the web stack.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:
    from bertserve.service.limits import WorkBudget

LogFormat = Literal["text", "json"]

REQUEST_ID: ContextVar[str | None] = ContextVar("bertserve_request_id", default=None)
ACCESS_LOGGER: Final = "bertserve.access"
# what an access-log record carries besides its message (JSON keys; appended to text lines)
ACCESS_FIELDS: Final = (
    "method",
    "path",
    "status",
    "duration_ms",
    "model",
    "endpoint",
    "sequences",
    "tokens",
)
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


class RequestIdFilter(logging.Filter):
    """Stamps every record with the current request's id ("-" outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, request_id, the
    access fields when present, and the exception's traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", "-")
        out["request_id"] = None if request_id == "-" else request_id
        for key in ACCESS_FIELDS:
            if key in record.__dict__:
                out[key] = record.__dict__[key]
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure_logging(level: str, fmt: LogFormat) -> None:
    """Every logger (the service's, uvicorn's) through one stderr handler in `fmt`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uv = logging.getLogger(name)
        uv.handlers.clear()
        uv.propagate = True


def log_request(
    method: str,
    path: str,
    status: int,
    started: float,
    extra: Mapping[str, object],
    work: Sequence[WorkBudget],
) -> None:
    """The access-log line of one request (HTTP or gRPC): `started` is its `time.perf_counter()`,
    `extra` the model and endpoint a route named, `work` the budgets of its sequences and tokens."""
    fields: dict[str, Any] = {
        "method": method,
        "path": path,
        "status": status,
        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        **extra,
    }
    if work:
        fields["sequences"] = sum(w.sequences for w in work)
        fields["tokens"] = sum(w.tokens for w in work)
    log_access(fields)


def log_access(fields: dict[str, Any]) -> None:
    """One access-log line: `POST /v1/models/m/classify 200 3.2 ms model=m sequences=4 tokens=61`
    in text, every field as a key in JSON."""
    extra = " ".join(f"{k}={fields[k]}" for k in ("model", "endpoint", "sequences", "tokens") if k in fields)
    message = f"{fields['method']} {fields['path']} {fields['status']} {fields['duration_ms']} ms"
    logging.getLogger(ACCESS_LOGGER).info("%s%s", message, f" {extra}" if extra else "", extra=fields)
