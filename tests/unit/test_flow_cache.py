"""The flow cache in front of admission: bounded staleness, and one query per burst of misses."""

from __future__ import annotations

import asyncio

from app.domain.flows import Flow, FlowStatus
from app.infra.cache import CachedFlowRepository
from app.testing import FakeFlowRepository

GRAPH = {"nodes": [], "edges": []}


class CountingFlows(FakeFlowRepository):
    """Counts queries, and holds each until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.queries = 0
        self.release = asyncio.Event()
        self.fail: Exception | None = None

    async def get(self, flow_id: str) -> Flow | None:
        self.queries += 1
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return await super().get(flow_id)


async def flow_in(inner: CountingFlows) -> Flow:
    inner.release.set()
    flow = await inner.add("f", "owner", GRAPH, FlowStatus.ONLINE)  # type: ignore[arg-type]
    inner.release.clear()
    return flow


async def test_a_burst_of_misses_is_one_query_and_then_a_hit() -> None:
    inner = CountingFlows()
    flow = await flow_in(inner)
    cache = CachedFlowRepository(inner, ttl=60)

    waiting = [asyncio.create_task(cache.get(flow.id)) for _ in range(50)]
    await asyncio.sleep(0.01)
    inner.release.set()
    async with asyncio.timeout(5):
        results = await asyncio.gather(*waiting)

    assert results == [flow] * 50
    assert inner.queries == 1
    assert await cache.get(flow.id) == flow
    assert inner.queries == 1


async def test_a_cancelled_caller_does_not_cancel_the_others_query() -> None:
    inner = CountingFlows()
    flow = await flow_in(inner)
    cache = CachedFlowRepository(inner, ttl=60)

    first = asyncio.create_task(cache.get(flow.id))
    second = asyncio.create_task(cache.get(flow.id))
    await asyncio.sleep(0.01)
    first.cancel()
    inner.release.set()
    async with asyncio.timeout(5):
        assert await second == flow
    assert first.cancelled()


async def test_a_failed_query_reaches_every_caller_and_is_not_cached() -> None:
    inner = CountingFlows()
    flow = await flow_in(inner)
    cache = CachedFlowRepository(inner, ttl=60)
    inner.fail = RuntimeError("database gone")

    waiting = [asyncio.create_task(cache.get(flow.id)) for _ in range(3)]
    await asyncio.sleep(0.01)
    inner.release.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)

    assert all(isinstance(r, RuntimeError) for r in results)
    inner.fail = None
    assert await cache.get(flow.id) == flow
    assert inner.queries == 2


async def test_a_change_during_a_query_is_not_hidden_by_its_stale_answer() -> None:
    inner = CountingFlows()
    flow = await flow_in(inner)
    cache = CachedFlowRepository(inner, ttl=60)

    stale = asyncio.create_task(cache.get(flow.id))
    await asyncio.sleep(0.01)
    await cache.set_status(flow.id, FlowStatus.OFFLINE)  # through this process: invalidates
    inner.release.set()
    await stale

    fresh = await cache.get(flow.id)
    assert fresh is not None and fresh.status is FlowStatus.OFFLINE
    assert inner.queries == 2


async def test_without_a_ttl_every_get_queries() -> None:
    inner = CountingFlows()
    flow = await flow_in(inner)
    cache = CachedFlowRepository(inner, ttl=0)
    inner.release.set()
    await cache.get(flow.id)
    await cache.get(flow.id)
    assert inner.queries == 2
