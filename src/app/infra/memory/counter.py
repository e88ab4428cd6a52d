"""The in-process :class:`~app.domain.ports.ConnectionCounter`."""

from __future__ import annotations

from app.infra.memory.store import MemoryStore

#: Entries outlive a process that stops refreshing them (as the Redis counter's do).
SLOT_TTL = 3600.0


class InProcessConnectionCounter:
    def __init__(self, store: MemoryStore | None = None) -> None:
        self._store = store or MemoryStore()

    async def acquire(self, user_id: str, slot: str, limit: int) -> bool:
        store = self._store
        store.check()
        now = store.clock()
        slots = store.connections.setdefault(user_id, {})
        for stale in [s for s, until in slots.items() if until <= now]:
            del slots[stale]
        if len(slots) >= limit:
            return False
        slots[slot] = now + SLOT_TTL
        return True

    async def release(self, user_id: str, slot: str) -> None:
        slots = self._store.connections.get(user_id)
        if slots is not None:
            slots.pop(slot, None)
            if not slots:
                del self._store.connections[user_id]

    def open_connections(self, user_id: str) -> int:
        return len(self._store.connections.get(user_id, {}))
