"""The shared chat owner cache (``ChatOwnerCache``): what one process remembers another reads,
on every backend; on Redis, read in the connection count's round trip and kept while used."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Callable

import pytest

from app.domain.chats import ChatSession
from app.infra.redis.client import make_redis
from app.infra.redis.keys import RedisKeys
from app.infra.redis.owners import OWNER_TTL, REMEMBER_LINGER, RedisChatOwners
from app.infra.redis.pipeline_batch import PipelineBatch
from tests.contract.conftest import CALL_TIMEOUT, Clients
from tests.contract.shared_state import Node
from tests.contract.test_redis_batching import RoundTrips


def chat() -> ChatSession:
    return ChatSession(chat_id=uuid.uuid4().hex, flow_id="flow-1", user_id="user-1")


async def remembered_elsewhere(nodes: Callable[[], Node], session: ChatSession) -> object:
    """What another process reads once the write nobody waits for has gone (bounded)."""
    other = nodes().owners
    async with asyncio.timeout(CALL_TIMEOUT):
        for _ in range(50):
            found = await other.lookup(session.chat_id)
            if found is not None:
                return found
            await asyncio.sleep(REMEMBER_LINGER)
    return None


async def test_an_owner_remembered_by_one_process_is_read_by_another(
    nodes: Callable[[], Node],
) -> None:
    session = chat()
    nodes().owners.remember(session)
    assert await remembered_elsewhere(nodes, session) == session
    async with asyncio.timeout(CALL_TIMEOUT):
        assert await nodes().owners.lookup(uuid.uuid4().hex) is None


@pytest.mark.integration
async def test_the_lookup_rides_in_the_count_round_trip_and_keeps_the_entry(
    server_nodes: Callable[[], Node],
    monkeypatch: pytest.MonkeyPatch,
    clients: Clients,
    redis_url: str,
    redis_prefix: str,
) -> None:
    session = chat()
    server_nodes().owners.remember(session)
    assert await remembered_elsewhere(server_nodes, session) == session
    raw, key = clients.redis(redis_url), RedisKeys(redis_prefix).owner(session.chat_id)
    await raw.expire(key, 5)

    node = server_nodes()
    trips = RoundTrips(monkeypatch)
    async with asyncio.timeout(CALL_TIMEOUT):
        looked_up = node.owners.lookup(session.chat_id)  # sent first, as admission does
        counted = await node.counter.acquire("user-1", "p:1", 10)
        found = await looked_up
    assert counted and found == session
    assert trips.count == 1
    assert await raw.ttl(key) > OWNER_TTL - 60  # read again: kept for the whole ttl
    await node.counter.release("user-1", "p:1")


@pytest.mark.integration
async def test_an_unreadable_entry_is_a_miss(
    server_nodes: Callable[[], Node], clients: Clients, redis_url: str, redis_prefix: str
) -> None:
    chat_id = uuid.uuid4().hex
    await clients.redis(redis_url).set(RedisKeys(redis_prefix).owner(chat_id), b"\xff not json")
    async with asyncio.timeout(CALL_TIMEOUT):
        assert await server_nodes().owners.lookup(chat_id) is None


async def test_redis_unreachable_is_a_miss_and_remembering_does_not_raise() -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    redis = make_redis(f"redis://127.0.0.1:{port}/0")
    batch = PipelineBatch(redis)
    owners = RedisChatOwners(batch, RedisKeys("flowgate-test-unreachable:"))
    try:
        session = chat()
        owners.remember(session)
        async with asyncio.timeout(CALL_TIMEOUT):
            assert await owners.lookup(session.chat_id) is None
    finally:
        await batch.aclose()
        await redis.aclose()
