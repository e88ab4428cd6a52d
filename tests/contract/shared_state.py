"""The cross-process ports (leases, turn logs, fan-out, connection counts, chat owners) as one
process of a deployment sees them; ``make()`` gives another process over the same state: another
set of in-process twins over one MemoryStore, or another Redis client on the same prefix."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from app.infra.memory import (
    InProcessChannels,
    InProcessChatOwners,
    InProcessConnectionCounter,
    InProcessLease,
    InProcessTurnLog,
    MemoryStore,
)
from app.infra.redis import (
    RedisChannels,
    RedisConnectionCounter,
    RedisKeys,
    RedisLease,
    RedisTurnLog,
)
from app.infra.redis.owners import RedisChatOwners
from app.infra.redis.pipeline_batch import PipelineBatch
from tests.contract.conftest import Clients

MEMORY, REDIS, CLUSTER = "memory", "redis", "redis-cluster"
BACKENDS = [
    MEMORY,
    pytest.param(REDIS, marks=pytest.mark.integration),
    pytest.param(CLUSTER, marks=pytest.mark.integration),
]
TTL = 600.0


@dataclass
class Node:
    """One process's adapters."""

    lease: Any
    log: Any
    channels: Any
    counter: Any
    owners: Any
    closers: list[Callable[[], Any]]


async def memory_nodes() -> AsyncIterator[Callable[[], Node]]:
    store = MemoryStore()

    def make() -> Node:
        channels = InProcessChannels(store)
        return Node(
            lease=InProcessLease(store),
            log=InProcessTurnLog(store, ttl=TTL, origin=channels),
            channels=channels,
            counter=InProcessConnectionCounter(store),
            owners=InProcessChatOwners(store),
            closers=[],
        )

    yield make


async def redis_nodes(
    clients: Clients, url: str, prefix: str, *, cluster: bool = False
) -> AsyncIterator[Callable[[], Node]]:
    made: list[Node] = []

    def make() -> Node:
        redis = clients.redis(url, cluster=cluster)
        keys = RedisKeys(prefix)
        origin = uuid.uuid4().hex[:12].encode()
        channels = RedisChannels(redis, keys, origin=origin)
        log = RedisTurnLog(
            redis,
            keys,
            origin=origin,
            ttl=TTL,
            live_ttl=TTL,
            cluster=cluster,
            listening=channels.listens,  # as app.bootstrap composes them
        )
        batch = PipelineBatch(redis)  # the count's and the owners', as app.bootstrap has it
        counter = RedisConnectionCounter(redis, keys, batch=batch)
        node = Node(
            lease=RedisLease(redis, keys),
            log=log,
            channels=channels,
            counter=counter,
            owners=RedisChatOwners(batch, keys),
            closers=[log.aclose, channels.aclose, counter.aclose, batch.aclose],
        )
        made.append(node)
        return node

    yield make
    for node in made:
        for close in node.closers:
            await close()


@pytest.fixture(params=BACKENDS)
async def nodes(
    request: pytest.FixtureRequest, clients: Clients
) -> AsyncIterator[Callable[[], Node]]:
    if request.param == MEMORY:
        generator = memory_nodes()
    elif request.param == CLUSTER:
        cluster = request.getfixturevalue("private_redis_cluster")
        prefix = f"flowgate-test:{uuid.uuid4().hex}:"
        generator = redis_nodes(clients, cluster.url, prefix, cluster=True)
    else:
        url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("redis_prefix")
        generator = redis_nodes(clients, url, prefix)
    make = await anext(generator)
    yield make
    async for _ in generator:
        pass


@pytest.fixture
async def server_nodes(
    clients: Clients, redis_url: str, redis_prefix: str
) -> AsyncIterator[Callable[[], Node]]:
    """Nodes on the shared single Redis server only (for tests about its round trips)."""
    generator = redis_nodes(clients, redis_url, redis_prefix)
    yield await anext(generator)
    async for _ in generator:
        pass
