"""Logs of a real server at DEBUG: one JSON format for every line, context on a turn's lines,
and no token anywhere, whatever carried it (query, header, cookie, ``auth`` frame)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import make_server
from tests.e2e.wsclient import ask, opened, send, until

pytestmark = pytest.mark.e2e

ORIGIN = "https://app.example"
LINE_KEYS = ("timestamp", "level", "logger", "event")
LEVELS = ("trace", "debug", "info", "warning", "error", "critical")
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
CONSOLE_LINE = re.compile(
    rf"{TIMESTAMP.pattern} ({'|'.join(level.upper() for level in LEVELS)}) +[\w.]+: "
)


def _lines(log: str) -> list[dict[str, Any]]:
    parsed = []
    for number, line in enumerate(log.splitlines(), 1):
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {number} is not JSON: {line!r}") from None
        assert isinstance(record, dict), line
        missing = [key for key in LINE_KEYS if key not in record]
        assert not missing, f"line {number} lacks {missing}: {line!r}"
        assert TIMESTAMP.fullmatch(record["timestamp"]), line
        assert record["level"] in LEVELS, line
        parsed.append(record)
    return parsed


async def test_debug_log_is_json_with_context_and_no_token(tmp_path: Path) -> None:
    s = make_server(tmp_path, log_level="DEBUG", log_format="json", allowed_origins=ORIGIN)
    s.start()
    try:
        flow = s.create_flow("logger")
        # Four tokens of the same user, each with another lifetime (so another ``exp``).
        tokens = [s.token("logger", ttl=3600 + i) for i in range(4)]
        in_query, in_header, in_cookie, in_frame = tokens
        assert len(set(tokens)) == 4
        url = f"{s.ws}/api/v1/chat/{flow}"
        async with opened(f"{url}?chat_id=log-query&t={in_query}") as ws:
            await send(ws, {"action": "auth", "token": in_frame})
            # A refused auth frame would be answered with an error before the pong.
            assert await ask(ws, {"action": "ping"}) == {"type": "pong"}
            await send(ws, {"inputs": {"input": "hello logs"}, "client_msg_id": "m-1"})
            turn = await until(ws, "close")
        turn_id = turn[0]["turn_id"]
        assert turn[-2]["status"] == "complete"
        async with opened(
            f"{url}?chat_id=log-header", additional_headers={"Authorization": f"Bearer {in_header}"}
        ) as ws:
            assert await ask(ws, {"action": "ping"}) == {"type": "pong"}
        async with opened(
            f"{url}?chat_id=log-cookie",
            origin=ORIGIN,
            additional_headers={"Cookie": f"theme=dark; access_token_cookie={in_cookie}"},
        ) as ws:
            assert await ask(ws, {"action": "ping"}) == {"type": "pong"}
    finally:
        s.stop()  # every line written, uvicorn's shutdown lines included

    log = s.log()
    for name, token in zip(("query", "header", "cookie", "auth frame"), tokens, strict=True):
        signature = token.split(".")[2]
        assert token not in log, f"the {name} token is in the log"
        assert signature not in log, f"the {name} token's signature is in the log"
        # Nor its end: websockets logs only the start and the end of a long frame.
        assert signature[-12:] not in log, f"the end of the {name} token's signature is in the log"

    records = _lines(log)  # every line, uvicorn's included, is a JSON object of the format
    events = [r["event"] for r in records]
    # DEBUG did log what carried the tokens: the request line, both headers, the auth frame.
    assert any(e.startswith("< GET /api/v1/chat/") and "t=[redacted]" in e for e in events)
    assert "< authorization: Bearer [redacted]" in events
    assert "< cookie: [redacted]" in events
    assert any('"action": "auth", "token": "[redacted]"' in e for e in events), events
    assert {"uvicorn.error", "uvicorn.access", "app.api.chat_socket"} <= {
        r["logger"] for r in records
    }
    turn_lines = [r for r in records if r.get("turn_id") == turn_id]
    assert any(r["logger"] == "app.domain.chat.turn" for r in turn_lines), turn_lines
    for record in turn_lines:
        assert (record["chat_id"], record["flow_id"], record["user_id"]) == (
            "log-query",
            flow,
            "logger",
        )
    admitted = [r for r in records if r["event"] == "admitted to feature chat"]
    assert [(r["chat_id"], r["flow_id"], r["user_id"]) for r in admitted] == [
        (chat_id, flow, "logger") for chat_id in ("log-query", "log-header", "log-cookie")
    ]


async def test_uvicorn_factory_path_writes_console_lines(tmp_path: Path) -> None:
    s = make_server(tmp_path, log_format="console", log_level="INFO")
    try:
        # uvicorn's own logging configuration until the app is built, flowgate's after.
        s.start(sys.executable, "-m", "uvicorn", "app.api.asgi:create_app", "--factory")
        flow = s.create_flow("console")
        token = s.token("console")
        async with opened(f"{s.ws}/api/v1/chat/{flow}?chat_id=con-1&t={token}") as ws:
            await send(ws, {"inputs": {"input": "hi"}})
            assert (await until(ws, "close"))[-2]["status"] == "complete"
    finally:
        s.stop()
    log = s.log()
    assert token not in log and token.split(".")[2] not in log
    lines = log.splitlines()
    assert any("uvicorn.error: Started server process" in line for line in lines), log
    assert any("uvicorn.access: " in line and "/health" in line for line in lines), log
    admitted = [line for line in lines if "app.api.chat_socket: admitted" in line]
    assert admitted and f"chat_id=con-1 flow_id={flow} user_id=console" in admitted[0]
    ended = [line for line in lines if "app.domain.chat.turn: turn ended" in line]
    assert ended and "chat_id=con-1" in ended[0] and "turn_id=t-" in ended[0]
    for line in lines:
        assert CONSOLE_LINE.match(line), f"not a console log line: {line!r}"
