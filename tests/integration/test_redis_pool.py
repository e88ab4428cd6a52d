"""The Redis client's pool (app.infra.redis.pool) against the real server: commands reuse one
idle connection without the inherited checkout, callers past the pool's size wait and are all
served, and a connection the server closed is replaced."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import BlockingConnectionPool, Redis

from app.infra.redis.client import make_redis
from app.infra.redis.pool import LeanBlockingConnectionPool

CALL_TIMEOUT = 10.0


def connections(pool: LeanBlockingConnectionPool) -> int:
    return len(pool._available_connections) + len(pool._in_use_connections)


async def test_sequential_commands_reuse_one_connection_directly(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = make_redis(redis_url)
    pool = client.connection_pool
    assert isinstance(pool, LeanBlockingConnectionPool)
    inherited = 0
    checkout = BlockingConnectionPool.get_connection

    async def counted(self: BlockingConnectionPool, *args: object) -> object:
        nonlocal inherited
        inherited += 1
        return await checkout(self, *args)

    monkeypatch.setattr(BlockingConnectionPool, "get_connection", counted)
    try:
        async with asyncio.timeout(CALL_TIMEOUT):
            for i in range(50):
                await client.set(f"{redis_prefix}k", i)
                assert await client.get(f"{redis_prefix}k") == str(i).encode()
        assert connections(pool) == 1
        assert inherited == 1  # the first command made the connection; the rest took it
    finally:
        await client.aclose()


async def test_callers_past_the_pools_size_wait_and_are_all_served(
    redis_url: str, redis_prefix: str
) -> None:
    pool = LeanBlockingConnectionPool.from_url(redis_url, max_connections=2, timeout=5)
    client = Redis.from_pool(pool)
    try:
        started = time.monotonic()
        async with asyncio.timeout(CALL_TIMEOUT):
            # Six commands that each hold a connection for 0.2 s, two connections: three
            # waves. A return that forgot a queued caller would leave it waiting until the
            # pool's 5 s timeout ("No connection available").
            answers = await asyncio.gather(
                *(client.blpop([f"{redis_prefix}empty-{i}"], timeout=0.2) for i in range(6))
            )
        assert answers == [None] * 6
        assert 0.55 <= time.monotonic() - started < 4.0
        assert connections(pool) == 2
        # Idle again and nobody queued: the direct path serves the next command.
        async with asyncio.timeout(CALL_TIMEOUT):
            assert await client.ping()
        assert connections(pool) == 2
    finally:
        await client.aclose()


async def test_a_connection_the_server_closed_is_replaced(redis_url: str) -> None:
    client = make_redis(redis_url)
    killer = make_redis(redis_url)
    try:
        async with asyncio.timeout(CALL_TIMEOUT):
            mine = await client.client_id()
            assert await killer.client_kill_filter(_id=mine) == 1
            # The idle connection is dead; the next command still gets its answer.
            assert await client.ping()
            assert await client.client_id() != mine
    finally:
        await client.aclose()
        await killer.aclose()
