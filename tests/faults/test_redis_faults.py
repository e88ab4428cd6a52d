"""Redis goes away (issue 7, points 2 and 5): every socket still gets every frame once, and
while Redis is down no socket is admitted that could not run a turn."""

from __future__ import annotations

import asyncio

import pytest

from tests.e2e.conftest import scripted_graph
from tests.e2e.wsclient import ask, opened, send
from tests.faults.conftest import (
    Deployment,
    FaultServer,
    all_finished,
    assert_answered_once,
    assert_turn,
    eventually,
    history_of,
    joined,
    new_chat,
    record,
    refusal,
    words,
)

pytestmark = [pytest.mark.e2e, pytest.mark.faults]


async def test_redis_restart_mid_turn_loses_and_doubles_nothing(deployment: Deployment) -> None:
    d = deployment
    reply = words(30)
    flow = d.create_flow(scripted_graph(reply, delay=0.1))
    token, chat = d.token(), new_chat()
    async with (
        opened(d.a.chat_url(flow, token, chat)) as here,
        opened(d.b.chat_url(flow, token, chat)) as there,
    ):
        await joined(here, there)
        a, b = await record(here, "A (asker)"), await record(there, "B (watcher)")
        await send(here, {"inputs": {"input": "through a redis restart"}})
        await b.expect(lambda r: r.count("stream") >= 5, 10, "5 stream frames before the fault")
        await asyncio.to_thread(d.redis.restart, 1.5)
        await all_finished(a, b, timeout=12)
    end_b = assert_turn(b, statuses={"complete"}, reply=reply)
    end_a = assert_turn(a, statuses={"complete"}, reply=reply)
    assert a.chat == b.chat, "the two sockets of the chat saw different frames"
    begin = b.of_type("begin")[0]
    rows = await d.rows(chat)
    answer = assert_answered_once(rows, "through a redis restart", status="complete", message=reply)
    assert len(rows) == 2, rows
    assert end_b["message_id"] == end_a["message_id"] == answer["id"]
    assert begin["message_id"] == rows[0]["id"]
    # Until its health check sees Redis again, a process refuses new sockets 1013 (try again
    # later), as it should: a client retries, and so does this one.
    assert await eventually(lambda: _ready(d.b), 10), "B not ready again after the restart"
    history = await history_of(d.b.chat_url(flow, token, chat))
    assert [(m["message"], m["status"]) for m in history] == [
        (reply, "complete"),
        ("through a redis restart", None),
    ]


async def test_redis_down_at_connect_refuses_then_recovers(deployment: Deployment) -> None:
    d = deployment
    reply = words(5)
    flow = d.create_flow(scripted_graph(reply, delay=0.01))
    token = d.token()
    await asyncio.to_thread(d.redis.stop)
    try:
        for server in (d.a, d.b):
            url = server.chat_url(flow, token, new_chat())
            assert await refusal(url) == (1013, "service unavailable"), server.name
            assert await server.status("/ready") == 503, server.name
            assert await server.status("/health") == 200, server.name
    finally:
        await asyncio.to_thread(d.redis.start)
    # Back without restarting flowgate: admitted again, and a turn runs.
    for server in (d.a, d.b):
        assert await eventually(lambda s=server: _ready(s), 10), f"{server.name} not ready again"
        chat = new_chat()
        url = server.chat_url(flow, token, chat)
        assert await eventually(lambda u=url: _admitted(u), 10), f"{server.name} refuses still"
        async with opened(url) as socket:
            seen = await record(socket, server.name)
            await send(socket, {"inputs": {"input": "after redis came back"}})
            await seen.finished(10)
        end = assert_turn(seen, statuses={"complete"}, reply=reply)
        rows = await d.rows(chat)
        answer = assert_answered_once(rows, "after redis came back", status="complete")
        assert answer["id"] == end["message_id"]


async def _ready(server: FaultServer) -> bool:
    return await server.status("/ready") == 200


async def _admitted(url: str) -> bool:
    async with opened(url) as socket:
        return await ask(socket, {"action": "ping"}) == {"type": "pong"}
