"""The in-process :class:`~app.domain.ports.ChatOwnerCache`, over a :class:`MemoryStore`
shared by "processes" (the Redis one's twin, for tests; the embedded default has one process,
whose admission remembers owners itself, and does not use it)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from app.domain.chats import ChatSession
from app.infra.memory.store import MemoryStore

#: Owners kept at most; all are dropped when full (a hint: the repository still decides).
MAX_OWNERS = 100_000


class InProcessChatOwners:
    """Chat owners remembered in a :class:`MemoryStore`; ``lookups`` counts the reads."""

    def __init__(self, store: MemoryStore | None = None) -> None:
        self._store = store or MemoryStore()
        self.lookups = 0

    def lookup(self, chat_id: str) -> Awaitable[ChatSession | None]:
        self.lookups += 1
        answer: asyncio.Future[ChatSession | None] = asyncio.get_running_loop().create_future()
        answer.set_result(None if self._store.down else self._store.owners.get(chat_id))
        return answer

    def forget_all(self) -> None:
        """Drop every remembered owner, as a Redis restart would."""
        self._store.owners.clear()

    def remember(self, session: ChatSession) -> None:
        if not self._store.down:
            owners = self._store.owners
            if len(owners) >= MAX_OWNERS:
                owners.clear()
            owners[session.chat_id] = session
