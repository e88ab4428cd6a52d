"""A short-lived cache in front of the flow repository, so that admission rarely queries.

Staleness is bounded by ``ttl`` (``FLOWGATE_FLOW_CACHE_TTL``, default 2 s): a flow published,
unpublished or deleted from another process (the CLI, another worker) is seen within that time;
changes made through this process's catalog are seen at once (``invalidate``).

Concurrent misses of one flow share one query: when the entry lapses under a burst of
connects (a fresh process in a reconnect storm), one query runs, not one per socket.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, TypeVar

from app.domain.flows import Flow, FlowStatus, FlowVersion, Graph
from app.domain.ports import FlowRepository

_MAX_ENTRIES = 10_000
_Cache = TypeVar("_Cache", bound=dict[Any, Any])
_Value = TypeVar("_Value")


class CachedFlowRepository:
    def __init__(self, inner: FlowRepository, ttl: float) -> None:
        self._inner = inner
        self._ttl = ttl
        self._flows: dict[str, tuple[float, Flow | None]] = {}
        self._versions: dict[int, tuple[float, FlowVersion | None]] = {}
        #: Queries under way, by key: later misses of the same key wait for the same one.
        self._loading: dict[Hashable, asyncio.Future[Any]] = {}

    async def get(self, flow_id: str) -> Flow | None:
        return await self._load(("flow", flow_id), self._flows, flow_id, self._inner.get)

    async def get_version(self, version_id: int) -> FlowVersion | None:
        # Versions never change once saved; only deletion (with their flow) ends them.
        return await self._load(
            ("version", version_id), self._versions, version_id, self._inner.get_version
        )

    async def _load(
        self,
        key: Hashable,
        cache: dict[Any, tuple[float, _Value]],
        id_: Any,
        query: Callable[[Any], Awaitable[_Value]],
    ) -> _Value:
        hit = cache.get(id_)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        loading = self._loading.get(key)
        if loading is None:
            # A task of its own, so that no caller's cancellation cancels the others' query.
            loading = self._loading[key] = asyncio.ensure_future(
                self._query(key, cache, id_, query)
            )
        return await asyncio.shield(loading)

    async def _query(
        self,
        key: Hashable,
        cache: dict[Any, tuple[float, _Value]],
        id_: Any,
        query: Callable[[Any], Awaitable[_Value]],
    ) -> _Value:
        me = asyncio.current_task()
        now = time.monotonic()
        try:
            value = await query(id_)
        finally:
            invalidated = self._loading.get(key) is not me
            if not invalidated:
                del self._loading[key]
        if not invalidated and self._ttl > 0:
            _bounded(cache)[id_] = (now + self._ttl, value)
        return value

    def invalidate(self, flow_id: str) -> None:
        self._flows.pop(flow_id, None)
        self._loading.clear()  # a query under way may have read what changed
        self._versions = {
            key: hit
            for key, hit in self._versions.items()
            if hit[1] is None or hit[1].flow_id != flow_id
        }

    async def add(self, name: str, owner_id: str, graph: Graph, status: FlowStatus) -> Flow:
        flow = await self._inner.add(name, owner_id, graph, status)
        self.invalidate(flow.id)
        return flow

    async def set_status(self, flow_id: str, status: FlowStatus) -> Flow | None:
        self.invalidate(flow_id)
        return await self._inner.set_status(flow_id, status)

    async def delete(self, flow_id: str) -> bool:
        self.invalidate(flow_id)
        return await self._inner.delete(flow_id)

    async def list(self) -> Sequence[Flow]:
        return await self._inner.list()

    async def add_version(
        self, flow_id: str, name: str, graph: Graph, make_current: bool
    ) -> FlowVersion:
        self.invalidate(flow_id)
        return await self._inner.add_version(flow_id, name, graph, make_current)


def _bounded(cache: _Cache) -> _Cache:
    """Drop everything when full: simpler than LRU, and entries live only seconds anyway."""
    if len(cache) >= _MAX_ENTRIES:
        cache.clear()
    return cache
