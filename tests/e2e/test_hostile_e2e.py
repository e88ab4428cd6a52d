"""Hostile input against a real server (issue 9): every case gets the protocol's answer.

Admission parameters and forged identities close with 1008 and the rule's reason; bad frames
on an open socket get an error frame naming the JSON path; limits (frame size, rate, the
HTTP layer's request bounds) answer with their documented code or HTTP status. At the end the
server still serves a normal turn, and its whole log holds no traceback and no 1011. The
suite runs twice: on the embedded SQLite, and on PostgreSQL with Redis (marked integration).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from tests.e2e.conftest import SECRET, Server, make_server, scripted_graph
from tests.e2e.wsclient import ask, close_of, opened, recv, send, until

pytestmark = pytest.mark.e2e

BIG = 2**63  # one past the largest 64-bit id
OWNER = "hostile-owner"
HANDSHAKE = (
    b"Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


class Target:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.flow = server.create_flow(OWNER, scripted_graph("all good"))
        self.token = server.token(OWNER)

    def url(self, flow: str | None = None, *, token: str | None = None, **query: str) -> str:
        params = {"t": token or self.token, "chat_id": f"c-{uuid.uuid4().hex[:12]}", **query}
        suffix = "&".join(f"{k}={v}" for k, v in params.items())
        return f"{self.server.ws}/api/v1/chat/{flow or self.flow}?{suffix}"


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)],
)
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    """One server per backend: the embedded SQLite, and PostgreSQL with Redis (whose driver
    refuses a NUL or a number past 64 bits, where SQLite would store it)."""
    stores: dict[str, str] = {}
    if request.param == "postgres":
        stores = {
            "database_url": request.getfixturevalue("pg_database_url"),
            "redis_url": request.getfixturevalue("redis_url"),
            "redis_prefix": f"flowgate-test:{uuid.uuid4().hex}:",
        }
    server = make_server(
        tmp_path_factory.mktemp(f"hostile-{request.param}"), messages_per_second="20", **stores
    )
    server.start()
    yield Target(server)
    server.stop()


def signed(payload: str) -> str:
    """An HS256 token over exactly ``payload`` (json.dumps could not repeat a key)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(payload.encode())
    signature = hmac.new(SECRET.encode(), head.encode(), hashlib.sha256).digest()
    return head + "." + b64(signature)


def claims(sub: Any, **extra: Any) -> str:
    body = {"sub": sub, "exp": int(time.time()) + 3600, **extra}
    return signed(json.dumps(body))


# -- admission: query parameters and path ------------------------------------------------------


@pytest.mark.parametrize(
    "version_id",
    [
        str(BIG),
        "9" * 30,
        "9" * 5000,  # past int()'s 4300 digits too
        "-1",
        "1e3",
        "%201",
        "1_0",
        "%D9%A3",  # an Arabic-Indic digit: int() would take it
        "0x10",
        str(BIG - 1),  # in range, no such version
    ],
)
async def test_version_id_out_of_range_is_not_found(target: Target, version_id: str) -> None:
    assert await close_of(target.url(version_id=version_id)) == (1008, "version not found")


@pytest.mark.parametrize(
    "flow_id", ["f" * 33, "f" * 2000, "abc%00", "a%0Ab", "%E2%98%83" * 12, "%F0%9F%98%80"]
)
async def test_flow_id_that_no_flow_can_have_is_deleted(target: Target, flow_id: str) -> None:
    assert await close_of(target.url(flow_id)) == (1008, "flow deleted")


@pytest.mark.parametrize("chat_id", ["c" * 65, "a%00b", "%E4%BD%A0", "a%20b", "a/b"])
async def test_bad_chat_id_is_refused(target: Target, chat_id: str) -> None:
    assert await close_of(target.url(chat_id=chat_id)) == (1008, "invalid chat_id")


# -- admission: tokens and identity claims -----------------------------------------------------

FORGED = {
    "repeated role in a bisheng sub": lambda: claims(
        '{"user_id": "u8", "role": "user", "role": "admin"}'
    ),
    "repeated user_id in a bisheng sub": lambda: claims(
        '{"user_id": "u8", "user_id": "' + OWNER + '"}'
    ),
    "repeated key nested in a bisheng sub": lambda: claims(
        '{"user_id": "u8", "x": {"a": 1, "a": 2}}'
    ),
    "repeated claim in the payload": lambda: signed(
        f'{{"sub": "u8", "role": "user", "role": "admin", "exp": {int(time.time()) + 60}}}'
    ),
    "user id past 64 characters": lambda: claims("u" * 65),
    "bisheng user id past 64 characters": lambda: claims(json.dumps({"user_id": "u" * 65})),
    "empty sub": lambda: claims(""),
    "empty bisheng user id": lambda: claims('{"user_id": ""}'),
    "boolean sub": lambda: claims(True),
    "float sub": lambda: claims(1.5),
    "integer sub past 64 bits": lambda: claims(2**64),
    "control character in sub": lambda: claims("u\n8"),
    "list as bisheng user id": lambda: claims('{"user_id": ["u8"]}'),
    "bisheng sub nested 2000 deep": lambda: claims('{"user_id": ' + "[" * 2000),
    "claim nested 1500 deep": lambda: signed(
        '{"sub": "u8", "exp": 9999999999, "x": ' + "[" * 1500 + "]" * 1500 + "}"
    ),
    "exp past a float": lambda: signed('{"sub": "u8", "exp": 1e400}'),
    "garbage of 8000 characters": lambda: "x" * 8000,
}


USED_TOKENS: list[str] = []


@pytest.mark.parametrize("case", FORGED)
async def test_forged_identity_is_unauthorized(target: Target, case: str) -> None:
    token = FORGED[case]()
    USED_TOKENS.append(token)
    assert await close_of(target.url(token=token)) == (1008, "Unauthorized")


async def test_a_token_past_the_line_limit_in_a_header_is_refused(target: Target) -> None:
    # Under the 8 KiB line limit, over nothing: still just Unauthorized.
    url = target.url().split("?")[0] + "?chat_id=hdr"
    headers = {"Authorization": "Bearer " + "y" * 8000}
    assert await close_of(url, additional_headers=headers) == (1008, "Unauthorized")


# -- frames on an open socket ------------------------------------------------------------------

INVALID = [
    ({"action": "history", "before_id": BIG}, "$.before_id"),
    ({"action": "history", "before_id": -1}, "$.before_id"),
    ({"action": "history", "before_id": 10**30}, "$.before_id"),
    ({"action": "history", "limit": BIG}, "$.limit"),
    ({"action": "history", "limit": 0}, "$.limit"),
    ({"action": "resume", "after_id": BIG}, "$.after_id"),
    ({"action": "resume", "after_id": -(2**63) - 1}, "$.after_id"),
    ({"action": "resume", "after_id": 0, "after_seq": BIG}, "$.after_seq"),
    ({"action": "resume", "after_id": 0, "after_seq": -2}, "$.after_seq"),
    ('{"action": "resume", "after_id": 1e400}', "$.after_id"),
    ({"action": "resume", "after_id": 0, "turn_id": "t" * 65}, "$.turn_id"),
    ({"inputs": {"input": "hi"}, "client_msg_id": "m" * 129}, "$.client_msg_id"),
    ({"inputs": {"input": "hi"}, "client_msg_id": "m\x00"}, "$.client_msg_id"),
    ({"inputs": {"input": "h\x00i"}}, "$.inputs.input"),
    ({"inputs": "hi"}, "$.inputs"),
    ({"action": "a" * 100}, "$.action"),
    ({"action": 5}, "$.action"),
    ({"action": "auth", "token": "z" * 9000}, "$.token"),
    ('{"x": ' + "[" * 3000 + "]" * 3000 + "}", "`$`"),
    ('{"inputs": {"input": "hi", "deep": ' + "{" * 40 + "}" * 40 + "}}", "`$`"),
    ("[1, 2]", "`$`"),
    ("{}", "`$`"),
]


@pytest.mark.parametrize(("frame", "path"), INVALID, ids=lambda v: str(v)[:40])
async def test_bad_frame_gets_invalid_message_with_its_path(
    target: Target, frame: dict[str, Any] | str, path: str
) -> None:
    async with opened(target.url()) as ws:
        reply = await ask(ws, frame)
        assert (reply["type"], reply["code"]) == ("error", "invalid_message"), reply
        assert path in reply["message"]
        assert (await ask(ws, {"action": "ping"})) == {"type": "pong"}  # still open


@pytest.mark.parametrize("frame", ["{not json", '"\\udc00"', "\x00", '{"a": 1', b"\xff\xfe{}"])
async def test_frame_that_is_not_json_gets_invalid_json(target: Target, frame: str | bytes) -> None:
    async with opened(target.url()) as ws:
        await ws.send(frame)  # bytes: a binary frame
        reply = await recv(ws)
        assert (reply["type"], reply["code"]) == ("error", "invalid_json"), reply
        assert (await ask(ws, {"action": "ping"})) == {"type": "pong"}


@pytest.mark.parametrize(
    ("feature", "frame", "reply"),
    [
        ("compute", '{"action": "compute", "data": ' + "9" * 400 + "}", "Invalid input"),
        ("compute", '{"action": "compute", "data": "1e400"}', "Invalid input"),
        ("translate", {"text": "hi", "target_language": "x" * 100}, "$.target_language"),
        ("translate", {"text": "hi", "target_language": ""}, "$.target_language"),
    ],
)
async def test_feature_frames_out_of_bounds(
    target: Target, feature: str, frame: dict[str, Any] | str, reply: str
) -> None:
    url = f"{target.server.ws}/api/v1/chat/{target.flow}/{feature}?t={target.token}&chat_id=k1"
    async with opened(url) as ws:
        assert reply in json.dumps(await ask(ws, frame))


async def test_auth_frame_with_an_ambiguous_identity_is_refused(target: Target) -> None:
    forged = claims('{"user_id": "' + OWNER + '", "role": "user", "role": "admin"}')
    async with opened(target.url()) as ws:
        reply = await ask(ws, {"action": "auth", "token": forged})
        assert (reply["type"], reply["code"]) == ("error", "unauthorized")
        assert await ask(ws, {"action": "ping"}) == {"type": "pong"}


# -- limits ------------------------------------------------------------------------------------


async def test_frame_past_the_size_limit_closes_1009(target: Target) -> None:
    async with opened(target.url(), max_size=None) as ws:
        await send(ws, {"inputs": {"input": "x" * 70_000}})
        with pytest.raises(ConnectionClosed) as closed:
            await recv(ws)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def test_a_flood_is_served_burst_plus_rate_then_closed(target: Target) -> None:
    """10,000 pings at once at 20/s: at most 20 + 20 × 3 pongs in 3 s, every other frame
    ``rate_limited`` (with retry_after > 0), and after 2 × 20 refusals the socket is closed."""
    pongs, limited = 0, []
    async with opened(target.url()) as ws:
        started = time.monotonic()
        try:
            for _ in range(10_000):
                await ws.send('{"action": "ping"}')
        except ConnectionClosed:
            pass
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(3):
                for _ in range(10_000):
                    frame = json.loads(await ws.recv())
                    if frame["type"] == "pong":
                        pongs += 1
                    else:
                        limited.append(frame)
        elapsed = time.monotonic() - started
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "rate limit exceeded")
    assert 20 <= pongs <= 20 + 20 * elapsed
    assert {f["code"] for f in limited} == {"rate_limited"}
    assert all(f["retry_after"] > 0 for f in limited)
    assert len(limited) <= 2 * 20 + 20 * elapsed
    print(f"flood: {pongs} pongs, {len(limited)} rate_limited in {elapsed:.2f} s")


async def test_a_client_that_waits_retry_after_is_served(target: Target) -> None:
    async with opened(target.url()) as ws:
        for _ in range(20):
            await send(ws, {"action": "ping"})
        await send(ws, {"action": "ping"})
        replies = [await recv(ws) for _ in range(21)]
        assert replies[:20] == [{"type": "pong"}] * 20
        assert replies[20]["code"] == "rate_limited"
        await asyncio.sleep(replies[20]["retry_after"])
        assert await ask(ws, {"action": "ping"}) == {"type": "pong"}


def http_answer(port: int, request: bytes) -> tuple[int, bool]:
    """Send ``request`` over a raw socket: the HTTP status answered, and whether the server
    closed the connection after it (within 5 s)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            raw.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass
        received, closed = b"", False
        deadline = time.monotonic() + 5
        try:
            while time.monotonic() < deadline:
                chunk = raw.recv(65536)
                if not chunk:
                    closed = True
                    break
                received += chunk
        except (TimeoutError, ConnectionResetError):
            closed = closed or bool(received)
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", received)
    assert match, f"no HTTP answer: {received[:200]!r}"
    return int(match.group(1)), closed


CHAT = b"GET /api/v1/chat/x"


@pytest.mark.parametrize(
    ("request_bytes", "statuses"),
    [
        (CHAT + b"?t=" + b"a" * 100_000 + b" HTTP/1.1\r\n" + HANDSHAKE + b"\r\n", {400, 414}),
        (CHAT + b"?t=" + b"a" * 9000 + b" HTTP/1.1\r\n" + HANDSHAKE + b"\r\n", {414}),
        (CHAT + b" HTTP/1.1\r\n" + HANDSHAKE + b"X-A: " + b"a" * 9000 + b"\r\n\r\n", {431}),
        (CHAT + b" HTTP/1.1\r\n" + HANDSHAKE + b"X-A: a\r\n" * 200 + b"\r\n", {431}),
        (CHAT + b" HTTP/1.1\r\n" + HANDSHAKE.replace(b"13", b"12") + b"\r\n", {400, 426}),
        (
            CHAT + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            {400},
        ),
        (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", {400}),
        (b"GET /health?" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n", {400}),
        (CHAT + b"?t=\xff\xfe HTTP/1.1\r\n" + HANDSHAKE + b"\r\n", {400}),
        (CHAT + b" HTTP/1.1\r\n" + HANDSHAKE + b"X-A: a\x00b\r\n\r\n", {400}),
    ],
    ids=[
        "request line 100 KB",
        "request line 9 KB",
        "header 9 KB",
        "200 headers",
        "websocket version 12",
        "upgrade without key",
        "not HTTP",
        "incomplete head past 16 KiB",
        "raw bytes in the query",
        "NUL in a header",
    ],
)
def test_requests_the_http_layer_refuses_get_a_status_and_a_close(
    target: Target, request_bytes: bytes, statuses: set[int]
) -> None:
    status, closed = http_answer(target.server.port, request_bytes)
    assert status in statuses
    assert closed


# -- and afterwards ----------------------------------------------------------------------------


async def test_zz_the_server_still_serves_and_logged_no_fault(target: Target) -> None:
    async with opened(target.url()) as ws:
        await send(ws, {"inputs": {"input": "still there?"}, "client_msg_id": "after-all"})
        frames = await until(ws, "close")
    assert frames[-2]["type"] == "end" and frames[-2]["status"] == "complete"
    assert frames[-2]["message"] == "all good"
    log = target.server.log()
    assert "Traceback" not in log
    assert "internal error" not in log
    assert re.search(r"(?<![\d:.])1011(?!\d)", log) is None, "a 1011 close in the log"
    assert "OverflowError" not in log
    # Refusals name what was refused in a bounded line: a 2,000-character flow id or a
    # newline in it cannot flood or forge the log.
    refusals = [line for line in log.splitlines() if "refused" in line]
    assert refusals and max(map(len, refusals)) < 600
    assert not any(token in log for token in USED_TOKENS)
