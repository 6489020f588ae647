"""One logging setup for every cshare process: the API server, the agent, `cshare up`.

It lives in `agents/` because the agent may import nothing of the control plane while
the API may import the agent's package; both configure logging through `configure`.
Text for people at a terminal; JSON lines (`ts`, `level`, `logger`, `message`,
`request_id` when there is one, then any `extra=` fields) for log collectors. The API
sets `request_id` per request (api/request_ids.py); every line logged while it is
handled carries it, uvicorn's access line included.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import logging.config
import re
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Final, Literal, TextIO, get_args

__all__ = [
    "LOG_FORMATS",
    "JsonFormatter",
    "LogFormat",
    "RequestIdFilter",
    "TextFormatter",
    "accept_request_id",
    "configure",
    "dict_config",
    "request_id",
]

LogFormat = Literal["text", "json"]
LOG_FORMATS: Final[tuple[str, ...]] = get_args(LogFormat)

# The id of the request being handled, if any (set by the API's middleware).
request_id: ContextVar[str | None] = ContextVar("cshare_request_id", default=None)

_SANE_ID: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")

# Attributes every LogRecord has; any other attribute came in through `extra=`.
_STANDARD: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "request_id",
    "color_message",  # uvicorn's coloured copy of the message
}
# uvicorn's access line: its arguments, named for the JSON line.
_ACCESS_ARGS: Final = ("client", "method", "path", "http_version", "status")


def accept_request_id(given: str | None) -> str:
    """The caller's `X-Request-ID` when it is a sane token, else a fresh id: an id ends
    up in logs and error bodies, so nothing else a client sends may be echoed."""
    if given and _SANE_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    """Stamps each record with the current request id (a handler filter: it sees the
    records of every logger, propagated ones included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id.get()
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    extra = {k: v for k, v in vars(record).items() if k not in _STANDARD}
    if record.name == "uvicorn.access" and isinstance(record.args, tuple):
        extra.update(zip(_ACCESS_ARGS, record.args, strict=False))
    return extra


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid:
            line["request_id"] = rid
        for key, value in _extras(record).items():
            line.setdefault(key, value)
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`2025-01-31 12:00:00,123 INFO    cshare.api [<request id>] message key=value`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s")  # the time; the rest is laid out below

    def formatMessage(self, record: logging.LogRecord) -> str:
        rid = getattr(record, "request_id", None)
        where = f"{record.name} [{rid}]" if rid else record.name
        line = f"{record.asctime} {record.levelname:<7} {where} {record.message}"
        if record.name == "uvicorn.access":
            return line  # its arguments are the message already
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        return f"{line} {extras}" if extras else line


def dict_config(
    log_format: LogFormat = "text", level: str = "INFO", stream: TextIO | None = None
) -> dict[str, Any]:
    """The `logging.config.dictConfig` document (also usable as uvicorn's `log_config`)."""
    level = level.upper()
    formatter = JsonFormatter if log_format == "json" else TextFormatter
    quiet = "WARNING" if logging.getLevelName(level) > logging.DEBUG else level
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"cshare": {"()": formatter}},
        "handlers": {
            "cshare": {
                "class": "logging.StreamHandler",
                "stream": stream or "ext://sys.stderr",
                "formatter": "cshare",
                "filters": ["request_id"],
            }
        },
        "root": {"level": level, "handlers": ["cshare"]},
        "loggers": {
            # uvicorn's own handlers off: its lines (the access log too) go through ours.
            "uvicorn": {"level": level, "handlers": [], "propagate": True},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"level": level},
            # A line per HTTP call (the agent polls): only when debugging.
            "httpx": {"level": quiet},
            "httpcore": {"level": quiet},
        },
    }


def configure(
    log_format: LogFormat = "text", level: str = "INFO", stream: TextIO | None = None
) -> None:
    """Configure this process's logging (call once, at start-up)."""
    _settle_prefect()
    logging.config.dictConfig(dict_config(log_format, level, stream))


def _settle_prefect() -> None:
    # Prefect configures logging once per process when `prefect.main` is first imported
    # (later in the agent's worker, or the API's first work pool), replacing uvicorn's
    # loggers and, when re-run, everything ours set up. Let it run first, then override.
    if importlib.util.find_spec("prefect") is not None:
        import prefect.main  # noqa: F401
