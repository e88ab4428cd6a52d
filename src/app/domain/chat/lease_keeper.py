"""Keeps the leases of the turns this process runs: one loop renews them all, every third of
their time to live, so a chat is claimed for a few seconds at a time and freed soon after its
process dies (PROTOCOL.md §6)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from app.domain.errors import StoreUnavailable
from app.domain.ports import TurnLease, TurnLog

logger = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(
        self,
        lease: TurnLease,
        log: TurnLog,
        ttl: float,
        on_lost: Callable[[str, str], None],
    ) -> None:
        self._lease = lease
        self._log = log
        self.ttl = ttl
        self._on_lost = on_lost
        self._held: dict[str, str] = {}
        #: Releases under way, by chat: the next turn of the chat here waits for its own.
        self._releasing: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def acquire(self, chat_id: str, holder: str) -> bool:
        """Claim the chat for a turn; False if another holder has it.

        A client sends its next message as soon as it reads ``close``, while the last turn's
        lease is still being released (after its log is written): that release is waited for,
        so the chat is not reported busy to its own next turn.
        """
        releasing = self._releasing.get(chat_id)
        if releasing is not None:
            await asyncio.shield(releasing)
        if not await self._lease.acquire(chat_id, holder, self.ttl):
            return False
        self._held[chat_id] = holder
        return True

    def release(self, chat_id: str, holder: str) -> None:
        """The turn is finished: free the chat once everything it logged is written (so that
        the next turn's frames, perhaps on another process, come after this one's)."""
        self._stop_renewing(chat_id, holder)
        task = self._in_background(self._release(chat_id, holder))
        self._releasing[chat_id] = task
        task.add_done_callback(
            lambda done: (
                self._releasing.pop(chat_id, None) if self._releasing.get(chat_id) is done else None
            )
        )

    def abandon(self, chat_id: str, holder: str) -> None:
        """Stop renewing without releasing: the lease lapses and the turn gets finalised."""
        self._stop_renewing(chat_id, holder)

    async def run(self) -> None:
        """Renew every held lease, for ever (cancel to stop)."""
        while True:
            await asyncio.sleep(self.ttl / 3)
            await self.renew_once()

    async def renew_once(self) -> None:
        held = list(self._held.items())
        if not held:
            return
        try:
            kept = await self._lease.renew(held, self.ttl)
        except StoreUnavailable as exc:
            logger.warning("renewing %d turn leases failed: %s", len(held), exc)
            return
        for (chat_id, holder), still_ours in zip(held, kept, strict=True):
            if not still_ours and self._held.get(chat_id) == holder:
                logger.error("chat %s: lease of %s taken by another holder", chat_id, holder)
                del self._held[chat_id]
                self._on_lost(chat_id, holder)

    def holds(self) -> dict[str, str]:
        return dict(self._held)

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    def _stop_renewing(self, chat_id: str, holder: str) -> None:
        if self._held.get(chat_id) == holder:
            del self._held[chat_id]

    async def _release(self, chat_id: str, holder: str) -> None:
        try:
            await self._log.flush()
            await self._lease.release(chat_id, holder)
        except StoreUnavailable as exc:  # it lapses on its own within the lease time
            logger.warning("chat %s: lease not released: %s", chat_id, exc)

    def _in_background(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
