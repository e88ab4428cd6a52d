"""The one log format: JSON or console lines with the context of the connection or turn."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys

import pytest

from app.api.logs import ConsoleFormatter, JsonFormatter, logging_config
from app.domain import log_context

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def record(
    msg: str, *args: object, level: int = logging.INFO, exc: bool = False, **extra: object
) -> logging.LogRecord:
    made = logging.LogRecord(
        "uvicorn.error", level, __file__, 1, msg, args or None, sys.exc_info() if exc else None
    )
    made.__dict__.update(extra)
    return made


def test_json_line_has_the_fixed_fields_first_then_context_then_extra() -> None:
    with log_context.bound(chat_id="c1", flow_id="f1", user_id="u1", turn_id="t-1"):
        line = JsonFormatter().format(
            record("%s - %s", "1.2.3.4", "GET /x", color_message="\x1b[1m", n=3)
        )
    assert "\n" not in line
    parsed = json.loads(line)
    assert list(parsed) == [
        "timestamp",
        "level",
        "logger",
        "event",
        "chat_id",
        "flow_id",
        "user_id",
        "turn_id",
        "n",
    ]
    assert TIMESTAMP.fullmatch(parsed["timestamp"])
    assert parsed["level"] == "info" and parsed["logger"] == "uvicorn.error"
    assert parsed["event"] == "1.2.3.4 - GET /x"
    assert parsed["turn_id"] == "t-1" and parsed["n"] == 3
    # Outside the block, nothing is bound.
    assert "chat_id" not in json.loads(JsonFormatter().format(record("later")))


def test_json_line_of_an_exception_is_one_line_and_redacted() -> None:
    try:
        raise RuntimeError(f"token {TOKEN}\nsecond line")
    except RuntimeError:
        made = record("turn failed", level=logging.ERROR, exc=True, header=f"Bearer {TOKEN}")
    line = JsonFormatter().format(made)
    assert "\n" not in line and TOKEN not in line
    parsed = json.loads(line)
    assert parsed["level"] == "error"
    assert "Traceback" in parsed["exception"] and "RuntimeError" in parsed["exception"]
    assert parsed["header"] == "Bearer [redacted]"


def test_context_values_and_unencodable_extras_are_redacted_too() -> None:
    with log_context.bound(flow_id=TOKEN):  # a flow id comes from the URL's path
        line = JsonFormatter().format(record("x", thing=object(), raw=b"t=1"))
    assert TOKEN not in line
    parsed = json.loads(line)
    assert parsed["flow_id"] == "[redacted]" and parsed["thing"].startswith("<object")


def test_console_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        made = record("admitted %s", "chat", exc=True, note="two words")
    with log_context.bound(chat_id="c1", user_id="u1"):
        text = ConsoleFormatter().format(made)
    first, *rest = text.splitlines()
    assert re.fullmatch(
        rf"{TIMESTAMP.pattern} INFO     uvicorn\.error: admitted chat"
        r'  chat_id=c1 user_id=u1 note="two words"',
        first,
    ), first
    assert rest[0].startswith("Traceback") and rest[-1] == "ValueError: boom"
    assert TOKEN not in ConsoleFormatter().format(record("see %s", f"?t={TOKEN}"))


def test_bind_none_removes_and_reset_restores() -> None:
    token = log_context.bind(chat_id="c1", flow_id="f1")
    try:
        inner = log_context.bind(chat_id=None, turn_id="t-1")
        assert log_context.current() == {"flow_id": "f1", "turn_id": "t-1"}
        log_context.reset(inner)
        assert log_context.current() == {"chat_id": "c1", "flow_id": "f1"}
    finally:
        log_context.reset(token)
    assert log_context.current() == {}


async def test_a_task_starts_with_its_creators_fields_and_keeps_its_own() -> None:
    seen: list[dict[str, object]] = []

    async def turn() -> None:
        log_context.bind(turn_id="t-1")
        seen.append(dict(log_context.current()))

    with log_context.bound(chat_id="c1"):
        await asyncio.get_running_loop().create_task(turn())
        assert log_context.current() == {"chat_id": "c1"}  # the task's binding stayed there
    assert seen == [{"chat_id": "c1", "turn_id": "t-1"}]


def test_logging_config_routes_uvicorn_and_litestar_through_the_root_handler() -> None:
    config = logging_config("info", "json")
    assert config["root"] == {"level": "INFO", "handlers": ["flowgate"]}
    assert config["handlers"]["flowgate"]["stream"] == "ext://sys.stderr"
    assert config["formatters"]["flowgate"]["()"] == "app.api.logs.JsonFormatter"
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "litestar", "app", "alembic"):
        assert config["loggers"][name] == {"level": "INFO", "handlers": [], "propagate": True}
    assert "aiosqlite" not in config["loggers"]
    debug = logging_config("DEBUG", "console")
    assert debug["formatters"]["flowgate"]["()"] == "app.api.logs.ConsoleFormatter"
    assert debug["loggers"]["aiosqlite"]["level"] == "INFO"
    assert logging_config("trace", "json")["root"]["level"] == "TRACE"
    assert logging.getLevelName("TRACE") == 5
    with pytest.raises(ValueError, match="log format"):
        logging_config("INFO", "xml")


@pytest.mark.parametrize("formatter", [JsonFormatter(), ConsoleFormatter()])
def test_a_record_that_cannot_be_formatted_still_gives_a_line_without_its_arguments(
    formatter: logging.Formatter,
) -> None:
    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError(TOKEN)

    line = formatter.format(record("x", extra_thing=Unprintable()))
    assert "could not be formatted" in line and TOKEN not in line
    assert "\n" not in line
