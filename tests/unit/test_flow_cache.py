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


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def cached_at_zero(ttl: float) -> tuple[CountingFlows, CachedFlowRepository, Clock, Flow]:
    inner = CountingFlows()
    flow = await flow_in(inner)
    clock = Clock()
    cache = CachedFlowRepository(inner, ttl=ttl, clock=clock)
    inner.release.set()
    assert await cache.get(flow.id) == flow
    inner.release.clear()  # from here every query waits until released
    return inner, cache, clock, flow


async def test_past_half_its_ttl_a_hit_is_served_at_once_and_one_fresh_copy_loads() -> None:
    inner, cache, clock, flow = await cached_at_zero(ttl=10)
    await inner.set_status(flow.id, FlowStatus.OFFLINE)  # changed by another process
    clock.now += 4
    assert await cache.get(flow.id) == flow
    assert inner.queries == 1  # before half the ttl: a plain hit

    clock.now += 2
    async with asyncio.timeout(1):  # the query is held: a get that waited for it would hang
        assert await cache.get(flow.id) == flow
        assert await cache.get(flow.id) == flow
    await asyncio.sleep(0.01)  # the refresh's task runs
    assert inner.queries == 2  # one refresh for both

    inner.release.set()
    await asyncio.sleep(0.01)
    fresh = await cache.get(flow.id)
    assert fresh is not None and fresh.status is FlowStatus.OFFLINE
    assert inner.queries == 2


async def test_a_copy_is_never_served_past_its_ttl() -> None:
    inner, cache, clock, flow = await cached_at_zero(ttl=10)
    await inner.set_status(flow.id, FlowStatus.OFFLINE)
    clock.now += 10
    waiting = asyncio.create_task(cache.get(flow.id))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # expired: it waits for the query
    inner.release.set()
    async with asyncio.timeout(5):
        fresh = await waiting
    assert fresh is not None and fresh.status is FlowStatus.OFFLINE


async def test_a_failed_refresh_keeps_the_copy_until_it_expires() -> None:
    inner, cache, clock, flow = await cached_at_zero(ttl=10)
    inner.fail = RuntimeError("database gone")
    inner.release.set()
    clock.now += 6
    assert await cache.get(flow.id) == flow  # starts the refresh, which fails
    await asyncio.sleep(0.01)
    assert inner.queries == 2
    clock.now += 2
    assert await cache.get(flow.id) == flow  # still the copy (and one more try beside it)
    await asyncio.sleep(0.01)

    clock.now += 2  # expired
    try:
        await cache.get(flow.id)
    except RuntimeError as error:
        assert str(error) == "database gone"
    else:
        raise AssertionError("an expired copy was served while the database was gone")
    inner.fail = None
    assert await cache.get(flow.id) == flow
