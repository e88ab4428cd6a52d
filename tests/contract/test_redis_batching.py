"""Per-turn Redis calls of concurrent turns are joined (app.infra.batching): the lease's
acquires and releases and the turn log's record reads, each one pipeline per batch, with every
caller answered as if it had gone alone."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from redis.asyncio.client import Pipeline, Redis

from app.domain.chats import TurnState
from app.infra.redis.raw_pipeline import RawPipeline
from tests.contract.conftest import CALL_TIMEOUT
from tests.contract.shared_state import Node
from tests.contract.test_turn_log import record

pytestmark = pytest.mark.integration

CHATS = 20


@pytest.fixture
def nodes(server_nodes: Callable[[], Node]) -> Callable[[], Node]:
    return server_nodes


class RoundTrips:
    """Pipelines executed (redis-py's and the raw one) and commands sent alone, by every
    client of this test."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        execute, command = Pipeline.execute, Redis.execute_command
        raw_write = RawPipeline._write

        def counted_raw(pipe: RawPipeline, *args: Any) -> Any:  # each batch it writes
            self.count += 1
            return raw_write(pipe, *args)

        async def counted_execute(pipe: Pipeline, *args: object, **kwargs: object) -> object:
            self.count += 1
            return await execute(pipe, *args, **kwargs)

        async def counted_command(client: Redis, *args: object, **kwargs: object) -> object:
            self.count += 1
            return await command(client, *args, **kwargs)

        monkeypatch.setattr(Pipeline, "execute", counted_execute)
        monkeypatch.setattr(RawPipeline, "_write", counted_raw)
        monkeypatch.setattr(Redis, "execute_command", counted_command)


def new_chats() -> list[str]:
    return [uuid.uuid4().hex for _ in range(CHATS)]


async def test_concurrent_acquires_are_one_round_trip_after_the_first(
    nodes: Callable[[], Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    lease, other = nodes().lease, nodes().lease
    chats, contested = new_chats(), uuid.uuid4().hex
    trips = RoundTrips(monkeypatch)
    async with asyncio.timeout(CALL_TIMEOUT):
        results = await asyncio.gather(
            *(lease.acquire(chat, f"p/{chat}", 30) for chat in chats),
            *(lease.acquire(contested, f"p/c{i}", 30) for i in range(4)),
        )
    assert results[:CHATS] == [True] * CHATS
    assert results[CHATS:].count(True) == 1  # in one batch too, the first SET NX wins
    assert trips.count <= 2  # the first call alone, the rest joined
    async with asyncio.timeout(CALL_TIMEOUT):
        holders = await asyncio.gather(*(other.holder(chat) for chat in chats))
    assert holders == [f"p/{chat}" for chat in chats]


async def test_concurrent_releases_free_only_their_own_leases(
    nodes: Callable[[], Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    mine, theirs = nodes().lease, nodes().lease
    chats = new_chats()
    ours, taken = chats[: CHATS // 2], chats[CHATS // 2 :]
    async with asyncio.timeout(CALL_TIMEOUT):
        for chat in ours:
            assert await mine.acquire(chat, "p1/t", 0.3)
        for chat in taken:
            assert await theirs.acquire(chat, "p2/t", 0.3)
        trips = RoundTrips(monkeypatch)
        # p1 releases all twenty: half are p2's, which must stay held and stay swept.
        await asyncio.gather(*(mine.release(chat, "p1/t") for chat in chats))
        releasing = trips.count
        holders = await asyncio.gather(*(theirs.holder(chat) for chat in chats))
        assert holders == [None] * len(ours) + ["p2/t"] * len(taken)
        await asyncio.sleep(0.5)  # p2 "died": its leases lapse, and the sweep lists them
        lapsed = set(await theirs.lapsed(100))
    assert set(taken) <= lapsed
    assert not set(ours) & lapsed  # released: their deadlines went with them
    # The first release alone (its script, its ZREM), then one pipeline and one ZREM.
    assert releasing <= 4


async def test_concurrent_record_reads_are_one_round_trip_after_the_first(
    nodes: Callable[[], Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    writer, reader = nodes(), nodes()
    chats = new_chats()
    for i, chat in enumerate(chats[:-1]):
        writer.log.start(record(chat, f"t{i}"))
    async with asyncio.timeout(CALL_TIMEOUT):
        await writer.log.flush()
        trips = RoundTrips(monkeypatch)
        records = await asyncio.gather(*(reader.log.current(chat) for chat in chats))
    assert trips.count <= 2
    assert records[-1] is None  # a chat without a turn
    assert [r.turn_id if r else None for r in records[:-1]] == [f"t{i}" for i in range(CHATS - 1)]
    assert all(r is not None and r.state is TurnState.RUNNING for r in records[:-1])
