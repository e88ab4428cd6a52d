"""Chat turns over a real socket: streaming, history, stop, busy, idempotency, fan-out."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
import uuid
from typing import Any

import pytest

from tests.e2e.conftest import Server, scripted_graph
from tests.e2e.wsclient import ask, opened, recv, send, until

pytestmark = pytest.mark.e2e

CHAT_FIELDS = {
    "type",
    "category",
    "is_bot",
    "message",
    "intermediate_steps",
    "message_id",
    "chat_id",
    "flow_id",
    "user_id",
    "turn_id",
    "seq",
    "status",
}
SLOW_REPLY = " ".join(f"w{i}" for i in range(40))


def url(server: Server, flow: str, token: str, chat_id: str | None = None) -> str:
    base = f"{server.ws}/api/v1/chat/{flow}?t={token}"
    return base + (f"&chat_id={chat_id}" if chat_id else "")


def new_chat() -> str:
    return f"c-{uuid.uuid4().hex[:10]}"


async def test_a_full_turn_streams_and_is_stored(server: Server) -> None:
    flow = server.create_flow("u1", scripted_graph("Hello brave new world"))
    token, chat = server.token("u1"), new_chat()
    async with opened(url(server, flow, token, chat)) as ws:
        await send(ws, {"inputs": {"input": "hi there"}})
        frames = await until(ws, "close")
    types = [f["type"] for f in frames]
    assert types == ["begin", "start", "stream", "stream", "stream", "stream", "end", "close"]
    assert all(set(f) == CHAT_FIELDS for f in frames)
    assert len({f["turn_id"] for f in frames}) == 1
    assert [f["seq"] for f in frames] == list(range(len(frames)))
    assert {(f["chat_id"], f["flow_id"], f["user_id"]) for f in frames} == {(chat, flow, "u1")}
    begin, end = frames[0], frames[-2]
    assert (begin["category"], begin["is_bot"], begin["message"]) == ("question", False, "hi there")
    assert all(f["is_bot"] and f["category"] == "answer" for f in frames[1:])
    assert "".join(f["message"] for f in frames[2:6]) == "Hello brave new world"
    assert (end["message"], end["status"]) == ("Hello brave new world", "complete")
    assert isinstance(begin["message_id"], int) and end["message_id"] > begin["message_id"]

    # History survives a reconnect, newest first, paged by before_id.
    async with opened(url(server, flow, token, chat)) as ws:
        history = await ask(ws, {"action": "history"})
        assert history["type"] == "history" and history["has_more"] is False
        assert [(m["message_id"], m["message"], m["status"]) for m in history["messages"]] == [
            (end["message_id"], "Hello brave new world", "complete"),
            (begin["message_id"], "hi there", None),
        ]
        page = await ask(ws, {"action": "history", "limit": 1})
        assert page["has_more"] is True and len(page["messages"]) == 1
        older = await ask(ws, {"action": "history", "before_id": page["messages"][0]["message_id"]})
        assert [m["message"] for m in older["messages"]] == ["hi there"]
        resumed = await ask(ws, {"action": "resume", "after_id": begin["message_id"]})
        assert [m["message_id"] for m in resumed["messages"]] == [end["message_id"]]


async def test_stop_mid_stream_stores_the_partial_answer(server: Server) -> None:
    flow = server.create_flow("u2", scripted_graph(SLOW_REPLY, delay=0.05))
    token, chat = server.token("u2"), new_chat()
    async with opened(url(server, flow, token, chat)) as ws:
        await send(ws, {"inputs": {"input": "go"}})
        frames = [await recv(ws) for _ in range(5)]  # begin, start, 3 pieces
        assert [f["type"] for f in frames] == ["begin", "start", "stream", "stream", "stream"]
        await send(ws, {"action": "stop"})
        rest = await until(ws, "close")
        end = rest[-2]
        assert end["type"] == "end" and end["status"] == "stopped"
        streamed = "".join(f["message"] for f in frames + rest if f["type"] == "stream")
        assert end["message"] == streamed and 0 < len(streamed) < len(SLOW_REPLY)
        history = await ask(ws, {"action": "history"})
        assert (history["messages"][0]["message"], history["messages"][0]["status"]) == (
            streamed,
            "stopped",
        )
        assert (await ask(ws, {"action": "stop"}))["code"] == "not_running"


async def test_second_message_while_running_is_busy(server: Server) -> None:
    flow = server.create_flow("u3", scripted_graph("one two three four", delay=0.1))
    token, chat = server.token("u3"), new_chat()
    async with opened(url(server, flow, token, chat)) as ws:
        await send(ws, {"inputs": {"input": "first"}})
        await send(ws, {"inputs": {"input": "second"}})
        frames = await until(ws, "close")
        busy = [f for f in frames if f["type"] == "error"]
        assert [f["code"] for f in busy] == ["busy"]
        assert frames[-2]["status"] == "complete"


async def test_client_msg_id_replays_instead_of_running_again(server: Server) -> None:
    flow = server.create_flow("u4", scripted_graph("same answer"))
    token, chat = server.token("u4"), new_chat()
    message = {"inputs": {"input": "once"}, "client_msg_id": "m-1"}
    async with opened(url(server, flow, token, chat)) as ws:
        await send(ws, message)
        first = await until(ws, "close")
    async with opened(url(server, flow, token, chat)) as ws:
        await send(ws, message)
        replay = await until(ws, "close")
        history = await ask(ws, {"action": "history"})
    assert [f["type"] for f in replay] == ["begin", "end", "close"]
    assert replay[0]["message_id"] == first[0]["message_id"]
    assert replay[1]["message_id"] == first[-2]["message_id"]
    assert replay[1]["message"] == "same answer" and replay[1]["status"] == "complete"
    assert {f["turn_id"] for f in replay} == {first[0]["turn_id"]}
    assert len(history["messages"]) == 2  # stored once


async def test_turn_outlives_its_socket(server: Server) -> None:
    flow = server.create_flow("u5", scripted_graph("a b c d e f g h", delay=0.1))
    token, chat = server.token("u5"), new_chat()
    async with opened(url(server, flow, token, chat)) as ws:
        await send(ws, {"inputs": {"input": "leave now"}})
        begin = await recv(ws)
        assert begin["type"] == "begin"
    await asyncio.sleep(1.5)  # 8 pieces at 0.1 s: finished while nobody listened
    async with opened(url(server, flow, token, chat)) as ws:
        history = await ask(ws, {"action": "history"})
    answer = history["messages"][0]
    assert (answer["message"], answer["status"]) == ("a b c d e f g h", "complete")


async def test_two_sockets_on_one_chat_both_see_the_turn(server: Server) -> None:
    flow = server.create_flow("u6", scripted_graph("shared reply", delay=0.05))
    token, chat = server.token("u6"), new_chat()
    async with (
        opened(url(server, flow, token, chat)) as tab1,
        opened(url(server, flow, token, chat)) as tab2,
    ):
        await asyncio.sleep(0.1)
        await send(tab1, {"inputs": {"input": "to both"}})
        seen1, seen2 = await asyncio.gather(until(tab1, "close"), until(tab2, "close"))
        assert seen1 == seen2
        assert seen1[-2]["message"] == "shared reply"
        # A stop from the other tab reaches the turn too.
        await send(tab1, {"inputs": {"input": "again"}})
        await recv(tab2)
        await send(tab2, {"action": "stop"})
        rest = await until(tab1, "close")
        assert rest[-2]["status"] in ("stopped", "complete")


async def test_debug_connections_are_private_and_persist_nothing(server: Server) -> None:
    flow = server.create_flow("u7", scripted_graph("debug answer"), online=False)
    server.cli("flows", "build", flow)
    token = server.token("u7")
    async with opened(url(server, flow, token)) as one, opened(url(server, flow, token)) as two:
        await send(one, {"inputs": {"input": "private"}})
        frames = await until(one, "close")
        assert frames[0]["message_id"] is None and frames[-2]["message_id"] is None
        assert frames[0]["chat_id"] is None
        assert await ask(two, {"action": "ping"}) == {"type": "pong"}  # saw none of it
        history = await ask(one, {"action": "history"})
        assert history == {"type": "history", "messages": [], "has_more": False}


def _raw_chat(server: Server, path: str) -> socket.socket:
    """A WebSocket opened by hand on a blocking socket with a small receive buffer: unlike a
    client library, it reads nothing until told to."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def _send_text(sock: socket.socket, text: str) -> None:
    payload = text.encode()
    assert len(payload) < 126
    # Client frames are masked; the all-zero key leaves the payload as it is.
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)


def _read_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "the server closed the socket"
        data += chunk
    return data


def _recv_text(sock: socket.socket) -> dict[str, Any]:
    while True:
        first, second = _read_exact(sock, 2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", _read_exact(sock, 2))
        elif length == 127:
            (length,) = struct.unpack("!Q", _read_exact(sock, 8))
        payload = _read_exact(sock, length)
        if first & 0x0F == 0x1:  # a text frame (the server sends no fragments)
            return json.loads(payload)  # type: ignore[no-any-return]
        assert first & 0x0F in (0x9, 0xA), f"unexpected opcode {first:#x}"  # pings


def _joined_turn(server: Server, pieces: int) -> tuple[str, list[dict[str, Any]]]:
    reply = " ".join(f"word{i:05d}" for i in range(pieces))
    flow = server.create_flow("u1", scripted_graph(reply))
    sock = _raw_chat(server, f"/api/v1/chat/{flow}?t={server.token('u1')}&chat_id={new_chat()}")
    with sock:
        _send_text(sock, '{"inputs": {"input": "hi"}}')
        time.sleep(1.5)  # not reading: the turn runs on, its pieces wait
        frames = [_recv_text(sock)]
        while frames[-1]["type"] != "close":
            frames.append(_recv_text(sock))
    return reply, frames


async def test_a_socket_that_does_not_read_gets_the_waiting_pieces_joined(server: Server) -> None:
    """Protocol 1.2: while a socket pushes back, the pieces waiting behind it come as joined
    stream frames (first_seq..seq), their text exact; every position once, in order."""
    # About 7 MB of frames: more than the kernel buffers of both ends hold (Linux lets a
    # socket's send buffer grow to 4 MiB by default), so the server's writes push back.
    pieces = 20_000
    reply, frames = await asyncio.to_thread(_joined_turn, server, pieces)
    covered = [p for f in frames for p in range(f.get("first_seq", f["seq"]), f["seq"] + 1)]
    assert covered == list(range(len(covered)))
    streams = [f for f in frames if f["type"] == "stream"]
    joined = [f for f in streams if "first_seq" in f]
    assert joined, f"no joined frame among {len(streams)} stream frames"
    assert len(streams) < pieces
    assert all(set(f) == CHAT_FIELDS | {"first_seq"} for f in joined)
    assert all(set(f) == CHAT_FIELDS for f in frames if f not in joined)
    end = frames[-2]
    assert "".join(f["message"] for f in streams) == end["message"] == reply
    assert end["status"] == "complete"
