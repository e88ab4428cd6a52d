"""The in-process :class:`~app.domain.ports.TurnLease`."""

from __future__ import annotations

from collections.abc import Sequence

from app.infra.memory.store import MemoryStore


class InProcessLease:
    def __init__(self, store: MemoryStore | None = None) -> None:
        self._store = store or MemoryStore()

    async def acquire(self, chat_id: str, holder: str, ttl: float) -> bool:
        store = self._store
        store.check()
        held = store.leases.get(chat_id)
        if held is not None and held[1] > store.clock():
            return False
        store.leases[chat_id] = (holder, store.clock() + ttl)
        return True

    async def renew(self, held: Sequence[tuple[str, str]], ttl: float) -> list[bool]:
        store = self._store
        store.check()
        now, kept = store.clock(), []
        for chat_id, holder in held:
            current = store.leases.get(chat_id)
            ours = current is None or current[0] == holder or current[1] <= now
            if ours:
                store.leases[chat_id] = (holder, now + ttl)
            kept.append(ours)
        return kept

    async def release(self, chat_id: str, holder: str) -> None:
        store = self._store
        store.check()
        held = store.leases.get(chat_id)
        if held is not None and held[0] == holder:
            del store.leases[chat_id]

    async def holder(self, chat_id: str) -> str | None:
        store = self._store
        store.check()
        held = store.leases.get(chat_id)
        return held[0] if held is not None and held[1] > store.clock() else None

    async def lapsed(self, limit: int) -> list[str]:
        store = self._store
        store.check()
        now = store.clock()
        return [chat for chat, (_, until) in store.leases.items() if until <= now][:limit]
