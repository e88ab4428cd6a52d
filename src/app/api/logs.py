"""One format for every line the process logs: flowgate's, uvicorn's, Litestar's, alembic's and
any library's. ``FLOWGATE_LOG_FORMAT=json``: one JSON object a line; ``console``: one readable
line (and the traceback under it). Every line has ``timestamp`` (UTC), ``level``, ``logger`` and
``event`` (the message); a line logged for a connection or a turn also has the fields bound in
:mod:`app.domain.log_context` (``chat_id``, ``flow_id``, ``user_id``, ``turn_id``); then the
call's ``extra`` fields, and ``exception`` (the traceback) when there is one. Tokens are
redacted from all of it (:mod:`app.api.log_redaction`).

The standard library and a small formatter rather than structlog: every logger that matters
here (uvicorn, websockets under uvicorn, Litestar, alembic, httpx, SQLAlchemy) is a standard
logger, so the one format has to be a ``logging.Formatter`` anyway (structlog would reach them
only through its ``ProcessorFormatter``); the domain may import only the standard library, so
its context is a ``contextvars`` binding either way; what structlog would add beyond that, a
processor chain and bound loggers, is the sixty lines below. msgspec, already a dependency,
encodes the JSON. One dependency fewer and one path for every line.
"""

from __future__ import annotations

import logging
import logging.config
import time
from abc import ABC, abstractmethod
from typing import Any

import msgspec

from app.api.log_redaction import EXTRA, redact_jwts, redact_record, safe_value
from app.domain import log_context

FORMATS = ("json", "console")
#: uvicorn's level below DEBUG (``FLOWGATE_LOG_LEVEL=TRACE``).
TRACE = 5
# uvicorn's copy of some messages with terminal colours: the same text again.
_DROPPED = frozenset({"color_message"})
# Loggers whose DEBUG lines are noise (two lines per SQL statement), kept at INFO.
_QUIET_AT_DEBUG = ("aiosqlite",)
# Configured explicitly: their own handlers (uvicorn's defaults) are removed, so that their
# lines reach the root logger's one handler.
_SERVER_LOGGERS = (
    "app",
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "uvicorn.asgi",
    "litestar",
    "alembic",
)
_ENCODER = msgspec.json.Encoder(enc_hook=str)


_second: tuple[int, str] = (-1, "")


def _timestamp(record: logging.LogRecord) -> str:
    global _second
    second = int(record.created)
    if second != _second[0]:  # lines come many a second: format the date once a second
        _second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{_second[1]}.{int(record.msecs):03d}Z"


# The redacted copy of each bound context, by the identity of the (never mutated) mapping that
# :mod:`app.domain.log_context` binds: a connection's lines share one. Holding the mapping
# keeps its id from being reused while cached.
_contexts: dict[int, tuple[object, dict[str, Any]]] = {}
_CONTEXTS_CACHED = 1024


def _context() -> dict[str, Any]:
    bound = log_context.current()
    cached = _contexts.get(id(bound))
    if cached is None or cached[0] is not bound:
        if len(_contexts) >= _CONTEXTS_CACHED:
            _contexts.clear()
        cached = _contexts[id(bound)] = (bound, {k: safe_value(v) for k, v in bound.items()})
    return dict(cached[1])


class _Formatter(logging.Formatter, ABC):
    def format(self, record: logging.LogRecord) -> str:
        try:
            fixed, fields = self.fields(record)
            return redact_jwts(self.render(fixed, fields))
        except Exception:  # not logging's "--- Logging error ---": it prints the arguments
            return self.render(self.fixed(record, "a log record could not be formatted"), {})

    def fixed(self, record: logging.LogRecord, event: str) -> dict[str, Any]:
        return {
            "timestamp": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": event,
        }

    def fields(self, record: logging.LogRecord) -> tuple[dict[str, Any], dict[str, Any]]:
        """The line's four fixed fields, and its others (context, extra, exception, stack)."""
        redact_record(record)
        fields = _context()
        attributes = record.__dict__
        for key in attributes[EXTRA]:
            if key not in _DROPPED and not key.startswith("_"):
                fields[key] = attributes[key]
        if record.exc_text:
            fields["exception"] = record.exc_text
        if record.stack_info:
            fields["stack"] = record.stack_info
        return self.fixed(record, str(record.msg).rstrip()), fields

    @abstractmethod
    def render(self, fixed: dict[str, Any], fields: dict[str, Any]) -> str:
        """One line of the record: its fixed fields, then the others."""


class JsonFormatter(_Formatter):
    def render(self, fixed: dict[str, Any], fields: dict[str, Any]) -> str:
        for key, value in fields.items():
            fixed.setdefault(key, value)
        return _ENCODER.encode(fixed).decode()


class ConsoleFormatter(_Formatter):
    """``2026-01-02T03:04:05.678Z INFO     app.domain.chat.turn: turn ended  chat_id=c1 ...``"""

    def render(self, fixed: dict[str, Any], fields: dict[str, Any]) -> str:
        exception = fields.pop("exception", None)
        stack = fields.pop("stack", None)
        text = (
            f"{fixed['timestamp']} {fixed['level'].upper():<8} {fixed['logger']}: {fixed['event']}"
        )
        if fields:
            text += "  " + " ".join(f"{k}={_console_value(v)}" for k, v in fields.items())
        for block in (exception, stack):
            if block:
                text += "\n" + str(block)
        return text


def _console_value(value: object) -> str:
    text = value if isinstance(value, str) else _ENCODER.encode(value).decode()
    return _ENCODER.encode(text).decode() if not text or any(c.isspace() for c in text) else text


def level_name(level: str) -> str:
    logging.addLevelName(TRACE, "TRACE")
    return level.strip().upper()


def logging_config(level: str, log_format: str) -> dict[str, Any]:
    """The ``logging.config.dictConfig`` of a flowgate process, also given to uvicorn as its
    ``log_config`` (so that its lines from before the app is built are in the format too).
    Every line goes to standard error, leaving standard output to CLI commands' results."""
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {log_format!r}")
    level = level_name(level)
    formatter = JsonFormatter if log_format == "json" else ConsoleFormatter
    loggers: dict[str, dict[str, Any]] = {
        name: {"level": level, "handlers": [], "propagate": True} for name in _SERVER_LOGGERS
    }
    if logging.getLevelName(level) == logging.DEBUG or level == "TRACE":
        for name in _QUIET_AT_DEBUG:
            loggers[name] = {"level": "INFO", "handlers": [], "propagate": True}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"flowgate": {"()": f"{__name__}.{formatter.__name__}"}},
        "handlers": {
            "flowgate": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "flowgate",
            }
        },
        "loggers": loggers,
        "root": {"level": level, "handlers": ["flowgate"]},
    }


def configure_logging(level: str, log_format: str) -> None:
    """Route every logger of the process through the one handler and format (idempotent)."""
    logging.config.dictConfig(logging_config(level, log_format))
    logging.captureWarnings(True)  # ``warnings`` too, as lines of logger ``py.warnings``
