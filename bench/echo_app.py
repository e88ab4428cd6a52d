"""The bare ASGI echo app that flowgate is measured against (no framework, no admission).

It accepts every WebSocket, then answers each frame with the reply flowgate would send, of the
same size: ``{"action": "compute", "data": 3}`` gets ``{"result":9.0}``; ``{"action": "ping"}``
gets ``{"type":"pong"}``; a chat message (``inputs``) gets a turn's frames, ``begin``, ``start``,
one ``stream`` frame per word of :data:`REPLY`, ``end`` and ``close``, shaped like flowgate's
(so "the echo's msgs/s" of B5 is what the bare server does with the same frames). Nothing is
validated or stored.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import msgspec

from bench.graph import REPLY_WORDS

_decode = msgspec.json.decode
_encode = msgspec.json.encode


class _Frame(msgspec.Struct):
    type: str
    category: str
    is_bot: bool
    message: str
    chat_id: str | None
    flow_id: str
    user_id: str
    turn_id: str
    message_id: int | None = None
    status: str | None = None
    intermediate_steps: str = ""


_FLOW_ID = uuid.UUID(int=0).hex
_PONG = '{"type":"pong"}'
_PIECES = [word + " " for word in REPLY_WORDS[:-1]] + [REPLY_WORDS[-1]]
_N_PIECES = int(os.environ.get("BENCH_ECHO_PIECES", len(_PIECES)))


def _frame(type_: str, message: str, chat_id: str, turn_id: str, **extra: Any) -> str:
    frame = _Frame(
        type=type_,
        category=extra.pop("category", "answer"),
        is_bot=extra.pop("is_bot", True),
        message=message,
        chat_id=chat_id,
        flow_id=_FLOW_ID,
        user_id="bench-u0",
        turn_id=turn_id,
        **extra,
    )
    return _encode(frame).decode()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            event = await receive()
            if event["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif event["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "websocket":
        await receive()
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    event = await receive()
    if event["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    chat_id = "c"
    for part in scope["query_string"].split(b"&"):
        if part.startswith(b"chat_id="):
            chat_id = part[8:].decode()
    while True:
        event = await receive()
        if event["type"] != "websocket.receive":
            return
        request = _decode(event.get("text") or event.get("bytes") or b"{}")
        action = request.get("action")
        if action == "compute":
            await send(
                {"type": "websocket.send", "text": '{"result":%s}' % float(request["data"]) ** 2}
            )
        elif action == "ping":
            await send({"type": "websocket.send", "text": _PONG})
        elif "inputs" in request:
            await _turn(send, request["inputs"].get("input", ""), chat_id)
        else:
            await send({"type": "websocket.send", "text": '{"error":"unknown"}'})


async def _turn(send: Any, question: str, chat_id: str) -> None:
    turn_id = f"t-{uuid.uuid4().hex[:12]}"
    out = []
    await send(
        {
            "type": "websocket.send",
            "text": _frame(
                "begin", question, chat_id, turn_id, category="question", is_bot=False, message_id=1
            ),
        }
    )
    await send({"type": "websocket.send", "text": _frame("start", "", chat_id, turn_id)})
    for piece in _PIECES[:_N_PIECES]:
        out.append(piece)
        await send({"type": "websocket.send", "text": _frame("stream", piece, chat_id, turn_id)})
    await send(
        {
            "type": "websocket.send",
            "text": _frame("end", "".join(out), chat_id, turn_id, message_id=2, status="complete"),
        }
    )
    await send({"type": "websocket.send", "text": _frame("close", "", chat_id, turn_id)})
