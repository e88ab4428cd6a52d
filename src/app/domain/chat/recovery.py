"""Finds turns that nobody will finish and finishes them (a process's sweeper).

Two sources, both safe to run on every process at once (each finalisation first takes the
chat's lease, so one process finishes a turn):

- turns whose lease lapsed (their process died, or was shut down past the grace period, or
  their answer could not be stored): found every half lease time;
- questions the database holds without an answer, older than a few lease times, whose chat no
  live lease names (the turn log was lost as well, or the process crashed on the embedded
  default, where the log lived in it): found when the process starts and every minute.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime, timedelta

from app.domain.chat.finaliser import TurnFinaliser
from app.domain.chats import ChatMessage, TurnRecord
from app.domain.errors import StoreUnavailable
from app.domain.ports import ChatRepository, TurnLease, TurnLog

logger = logging.getLogger(__name__)

SWEEP_BATCH = 100
UNANSWERED_EVERY = 60.0


class Recovery:
    def __init__(
        self,
        *,
        lease: TurnLease,
        log: TurnLog,
        chats: ChatRepository,
        finaliser: TurnFinaliser,
        process_id: str,
        lease_ttl: float,
        alone: bool = False,
    ) -> None:
        self._lease = lease
        self._log = log
        self._chats = chats
        self._finaliser = finaliser
        self._holder = f"{process_id}/finaliser-{uuid.uuid4().hex[:8]}"
        self._ttl = lease_ttl
        #: Whether this process is the only one on its stores (the embedded default): then a
        #: question without an answer found at start is no other process's running turn.
        self._alone = alone

    async def run(self) -> None:
        """Sweep now, then for ever (cancel to stop). Questions without an answer are looked
        for at start (all of them when alone), once more when the youngest of those skipped
        at start are old enough, then every minute."""
        loop = asyncio.get_running_loop()
        unanswered_due = [loop.time(), loop.time() + 3 * self._ttl + 1]
        first = True
        while True:
            try:
                await self.sweep_lapsed()
                if loop.time() >= unanswered_due[0]:
                    await self.sweep_unanswered(any_age=first and self._alone)
                    first = False
                    unanswered_due.pop(0)
                    if not unanswered_due:
                        unanswered_due.append(loop.time() + UNANSWERED_EVERY)
            except StoreUnavailable as exc:
                logger.warning("recovery sweep postponed: %s", exc)
            await asyncio.sleep(self._ttl / 2)

    async def sweep_lapsed(self) -> int:
        done = 0
        for chat_id in await self._lease.lapsed(SWEEP_BATCH):
            if await self._finish_chat(chat_id, None):
                done += 1
        return done

    async def sweep_unanswered(self, *, any_age: bool = False) -> int:
        # Younger questions may belong to turns whose lease a store restart lost a moment ago
        # (their process takes it again within a third of the lease time).
        older_than = datetime.now(UTC) - timedelta(seconds=0 if any_age else 3 * self._ttl)
        done = 0
        for question in await self._chats.unanswered(older_than, SWEEP_BATCH):
            holder = await self._lease.holder(question.chat_id)
            if holder is not None and holder.endswith(f"/{question.turn_id}"):
                continue  # it runs
            if await self._finish_chat(question.chat_id, question):
                done += 1
        return done

    async def holder_of(self, chat_id: str) -> str | None:
        """Who holds the chat's lease (a running turn), if anyone."""
        return await self._lease.holder(chat_id)

    async def finish_question(self, question: ChatMessage, record: TurnRecord | None) -> bool:
        """Finish the turn of a stored question now, under the chat's lease; False if the
        chat is held (then its holder, or the sweeper after it, finishes the turn)."""
        return await self._finish_chat(question.chat_id, question, record)

    async def _finish_chat(
        self, chat_id: str, question: ChatMessage | None, record: TurnRecord | None = None
    ) -> bool:
        if not await self._lease.acquire(chat_id, self._holder, self._ttl):
            return False
        try:
            current = record or await self._log.current(chat_id)
            if question is not None and (current is None or current.turn_id != question.turn_id):
                current = _record_of(question)
            if current is not None and not current.finished:
                await self._finaliser.finalise(current)
                await self._log.flush()
            return True
        finally:
            try:
                await self._lease.release(chat_id, self._holder)
            except StoreUnavailable:
                pass  # it lapses on its own


def _record_of(question: ChatMessage) -> TurnRecord:
    """A turn known only from its stored question (its log is gone)."""
    return TurnRecord(
        chat_id=question.chat_id,
        turn_id=question.turn_id,
        flow_id=question.flow_id,
        user_id=question.user_id,
        holder="",
        question_id=question.id,
        client_msg_id=question.client_msg_id,
    )
