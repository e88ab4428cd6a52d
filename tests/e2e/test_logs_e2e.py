"""Logs of a real server at DEBUG: one JSON format for every line, context on a turn's lines,
and no token anywhere, whatever carried it (query, header, cookie, ``auth`` frame)."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Server, make_server
from tests.e2e.wsclient import ask, opened, send, until

pytestmark = pytest.mark.e2e

ORIGIN = "https://app.example"
LINE_KEYS = ("timestamp", "level", "logger", "event")
CONSOLE_LINE = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (TRACE|DEBUG|INFO|WARNING|ERROR|CRITICAL) +[\w.]+: "
)


@pytest.fixture(scope="module")
def debug_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = make_server(
        tmp_path_factory.mktemp("logs"),
        log_level="DEBUG",
        log_format="json",
        allowed_origins=ORIGIN,
    )
    running.start()
    yield running
    running.stop()


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
        parsed.append(record)
    return parsed


async def test_debug_log_is_json_with_context_and_no_token(debug_server: Server) -> None:
    s = debug_server
    flow = s.create_flow("logger")
    # Four distinct tokens of the same user (a different lifetime each: a different ``exp``).
    in_query, in_header, in_cookie, in_frame = (s.token("logger", ttl=3600 + i) for i in range(4))
    assert len({in_query, in_header, in_cookie, in_frame}) == 4
    url = f"{s.ws}/api/v1/chat/{flow}"

    async with opened(f"{url}?chat_id=log-query&t={in_query}") as ws:
        await send(ws, {"action": "auth", "token": in_frame})
        assert await ask(ws, {"action": "ping"}) == {"type": "pong"}  # the auth frame was read
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
    s.stop()  # every line written, uvicorn's shutdown lines included

    log = s.log()
    # DEBUG really logged the handshakes (their request lines and headers) and the frames...
    assert "/api/v1/chat/" in log
    assert "authorization" in log.lower() and "cookie" in log.lower()
    assert '"action\\": \\"auth' in log or "'action': 'auth" in log or '"action": "auth' in log
    # ...and no token, nor any token's signature, is anywhere in it.
    for name, token in (
        ("query", in_query),
        ("header", in_header),
        ("cookie", in_cookie),
        ("auth frame", in_frame),
    ):
        signature = token.split(".")[2]
        assert token not in log, f"the {name} token is in the log"
        assert signature not in log, f"the {name} token's signature is in the log"
        # Nor its end: websockets logs a long frame's first and last characters only.
        assert signature[-12:] not in log, f"the end of the {name} token is in the log"

    records = _lines(log)
    loggers = {record["logger"] for record in records}
    assert {"uvicorn.error", "app.api.chat_socket"} <= loggers, loggers
    turn_lines = [r for r in records if r.get("turn_id") == turn_id]
    assert turn_lines, "no line carries the turn's id"
    for record in turn_lines:
        assert record["chat_id"] == "log-query"
        assert record["flow_id"] == flow
        assert record["user_id"] == "logger"
    connection_lines = [r for r in records if r.get("chat_id") == "log-header"]
    assert connection_lines, "no line carries the header connection's chat id"
    assert all(r["flow_id"] == flow and r["user_id"] == "logger" for r in connection_lines)


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
