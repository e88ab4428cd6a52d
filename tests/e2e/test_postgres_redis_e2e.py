"""The real adapters end to end: a server on PostgreSQL and Redis, the CLI beside it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from tests.conftest import delete_prefix
from tests.e2e.conftest import Server, make_server, scripted_graph
from tests.e2e.wsclient import ask, close_of, opened, recv, send, until

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


@pytest.fixture(scope="module")
def real_server(
    pg_database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    prefix = f"flowgate-test:{uuid.uuid4().hex}:"
    running = make_server(
        tmp_path_factory.mktemp("real"),
        database_url=pg_database_url,
        redis_url=redis_url,
        redis_prefix=prefix,
    )
    running.start()
    yield running
    running.stop()
    delete_prefix(redis_url, prefix)


async def test_turns_persist_in_postgres(real_server: Server) -> None:
    s = real_server
    flow = s.create_flow("pg-user", scripted_graph("stored in postgres"))
    token, chat = s.token("pg-user"), f"c-{uuid.uuid4().hex[:8]}"
    url = f"{s.ws}/api/v1/chat/{flow}?t={token}&chat_id={chat}"
    async with opened(url) as ws:
        await send(ws, {"inputs": {"input": "hello pg"}, "client_msg_id": "k1"})
        frames = await until(ws, "close")
    assert frames[-2]["message"] == "stored in postgres"
    async with opened(url) as ws:
        history = await ask(ws, {"action": "history"})
        await send(ws, {"inputs": {"input": "hello pg"}, "client_msg_id": "k1"})
        replay = await until(ws, "close")
    assert [m["message"] for m in history["messages"]] == ["stored in postgres", "hello pg"]
    assert [f["type"] for f in replay] == ["begin", "end", "close"]
    intruder = s.token("someone-else")
    assert await close_of(f"{s.ws}/api/v1/chat/{flow}?t={intruder}&chat_id={chat}") == (
        1008,
        "Forbidden",
    )


async def test_debug_build_records_live_in_redis(real_server: Server, redis_url: str) -> None:
    s = real_server
    flow = s.create_flow("pg-owner", scripted_graph("debugging"), online=False)
    token = s.token("pg-owner")
    assert await close_of(f"{s.ws}/api/v1/chat/{flow}?t={token}") == (1013, "build not passed")
    assert s.cli("flows", "build", flow).stdout.strip() == "success"
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        key = f"{s.env['FLOWGATE_REDIS_PREFIX']}flow_data_{flow}"
        assert client.hget(key, "status") == "success"
        assert 0 < client.ttl(key) <= 600
    finally:
        client.close()
    async with opened(f"{s.ws}/api/v1/chat/{flow}?t={token}") as ws:
        await send(ws, {"inputs": {"input": "x"}})
        frames = await until(ws, "close")
    assert frames[-2]["message"] == "debugging" and frames[-2]["message_id"] is None


@pytest.fixture(scope="module")
def twin_server(real_server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A second process of the same deployment: same database, Redis prefix and secret."""
    running = make_server(tmp_path_factory.mktemp("twin"))
    running.env = dict(real_server.env)
    running.start()
    yield running
    running.stop()


async def test_two_processes_share_a_chat(real_server: Server, twin_server: Server) -> None:
    flow = real_server.create_flow("both", scripted_graph(" ".join(["word"] * 30), delay=0.05))
    token, chat = real_server.token("both"), f"c-{uuid.uuid4().hex[:8]}"
    path = f"/api/v1/chat/{flow}?t={token}&chat_id={chat}"
    async with opened(real_server.ws + path) as here, opened(twin_server.ws + path) as there:
        # A pong means the connection is admitted and has joined its chat on the bus.
        assert await ask(here, {"action": "ping"}) == await ask(there, {"action": "ping"})
        await send(here, {"inputs": {"input": "to every process"}})
        first = await recv(there)
        assert first["type"] == "begin" and first["message"] == "to every process"
        # A second message from the other process: busy, the turn runs elsewhere.
        await send(there, {"inputs": {"input": "me too"}})
        frames = [await recv(there) for _ in range(3)]
        assert any(f.get("code") == "busy" for f in frames)
        # A stop from the other process reaches the turn.
        await send(there, {"action": "stop"})
        seen_here = await until(here, "close")
        seen_there = [f for f in frames if f["type"] != "error"] + await until(there, "close")
    assert seen_here[-2]["status"] == "stopped"
    assert seen_there[-2] == seen_here[-2]
    assert {f["turn_id"] for f in seen_there} == {first["turn_id"]}
    # The chat is free again, from either process.
    async with opened(twin_server.ws + path) as there:
        await send(there, {"inputs": {"input": "again"}})
        done = await until(there, "close")
    assert done[-2]["status"] == "complete"


async def test_a_socket_that_joins_on_another_process_mid_turn_streams_the_rest(
    real_server: Server, twin_server: Server
) -> None:
    """The turn starts with no other process listening to its chat (its batches then go
    unpublished); a socket of the chat opened on the other process mid-turn gets every piece
    from where it joined, in order, live, and the same end."""
    words = [f"w{n}" for n in range(40)]
    flow = real_server.create_flow("joiner", scripted_graph(" ".join(words), delay=0.05))
    token, chat = real_server.token("joiner"), f"c-{uuid.uuid4().hex[:8]}"
    path = f"/api/v1/chat/{flow}?t={token}&chat_id={chat}"
    async with opened(real_server.ws + path) as here:
        assert await ask(here, {"action": "ping"}) == {"type": "pong"}
        await send(here, {"inputs": {"input": "alone at first"}})
        seen_here = [await recv(here) for _ in range(8)]  # begin, start, a few pieces
        async with opened(twin_server.ws + path) as there:
            assert await ask(there, {"action": "ping"}) == {"type": "pong"}
            seen_there, arrived = [], []
            while not seen_there or seen_there[-1]["type"] != "close":
                seen_there.append(await recv(there))
                arrived.append(time.monotonic())
        seen_here += await until(here, "close")
    pieces = [f for f in seen_there if f["type"] == "stream"]
    assert len(pieces) >= 10  # it joined with most of the turn still to come
    # ...and streamed it as it was made (~50 ms a piece), not all at once at the end.
    streamed = [t for t, f in zip(arrived, seen_there, strict=True) if f["type"] == "stream"]
    assert streamed[-1] - streamed[0] > 0.5
    positions: list[int] = []
    for piece in pieces:
        positions.extend(range(piece.get("first_seq", piece["seq"]), piece["seq"] + 1))
    assert positions == list(range(positions[0], positions[-1] + 1))  # no gap, no repeat
    ends = [f for f in seen_there if f["type"] == "end"]
    assert ends and ends[-1] == next(f for f in seen_here if f["type"] == "end")
    assert ends[-1]["status"] == "complete"


async def test_a_new_chats_owner_is_remembered_for_every_process_once_flushed(
    real_server: Server, redis_url: str
) -> None:
    """The claim commits without waiting for the disk (app.infra.sql.claims); once
    it is proven flushed, the owner is written to Redis for the other processes."""
    s = real_server
    flow = s.create_flow("flushed-owner")
    chat = f"c-{uuid.uuid4().hex[:8]}"
    url = f"{s.ws}/api/v1/chat/{flow}?t={s.token('flushed-owner')}&chat_id={chat}"
    key = f"{s.env['FLOWGATE_REDIS_PREFIX']}{{chat:{chat}}}:owner"
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        async with opened(url) as ws:
            assert await ask(ws, {"action": "ping"}) == {"type": "pong"}
            remembered = None
            deadline = time.monotonic() + 5  # the proof follows the claim at once
            while remembered is None and time.monotonic() < deadline:
                remembered = client.get(key)
                if remembered is None:
                    await asyncio.sleep(0.05)
        assert remembered == f'["flushed-owner","{flow}"]'
    finally:
        client.close()
