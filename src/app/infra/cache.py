"""A short-lived cache in front of the flow repository, so that admission rarely queries.

Staleness is bounded by ``ttl`` (``FLOWGATE_FLOW_CACHE_TTL``, default 2 s): a flow published,
unpublished or deleted from another process (the CLI, another worker) is seen within that time;
changes made through this process's catalog are seen at once (``invalidate``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, TypeVar

from app.domain.flows import Flow, FlowStatus, FlowVersion, Graph
from app.domain.ports import FlowRepository

_MAX_ENTRIES = 10_000
_Cache = TypeVar("_Cache", bound=dict[Any, Any])


class CachedFlowRepository:
    def __init__(self, inner: FlowRepository, ttl: float) -> None:
        self._inner = inner
        self._ttl = ttl
        self._flows: dict[str, tuple[float, Flow | None]] = {}
        self._versions: dict[int, tuple[float, FlowVersion | None]] = {}

    async def get(self, flow_id: str) -> Flow | None:
        now = time.monotonic()
        hit = self._flows.get(flow_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        flow = await self._inner.get(flow_id)
        if self._ttl > 0:
            _bounded(self._flows)[flow_id] = (now + self._ttl, flow)
        return flow

    async def get_version(self, version_id: int) -> FlowVersion | None:
        # Versions never change once saved; only deletion (with their flow) ends them.
        now = time.monotonic()
        hit = self._versions.get(version_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        version = await self._inner.get_version(version_id)
        if self._ttl > 0:
            _bounded(self._versions)[version_id] = (now + self._ttl, version)
        return version

    def invalidate(self, flow_id: str) -> None:
        self._flows.pop(flow_id, None)
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
