"""Storing the questions and answers of concurrent turns, on PostgreSQL: one statement for all
the messages that arrive while the database is busy with earlier ones.

Every turn stores two messages, its question before its first piece streams and its answer
before ``end``; when many turns start at once (a hundred users asking in the same second)
their questions are one ``INSERT ... SELECT FROM unnest(...)`` on a lane
(:mod:`app.infra.sql.lanes`), not a hundred unit-of-work round trips, and the time to their
first piece is not a queue of transactions.

Storing stays idempotent per (turn, category): ``ON CONFLICT DO NOTHING``, and a message whose
turn had one already (a retry, a second finaliser) is read back by the caller's own path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from app.domain.chats import ChatMessage, NewMessage
from app.infra.batching import Batcher
from app.infra.sql.lanes import DriverLanes

# Ids are given in the order of ``unnest`` (one sequence, one statement), so two messages of a
# chat in one batch keep their order; a chat's question and answer are never in one batch
# anyway (the answer is stored after every piece of its turn).
_INSERT = """
INSERT INTO chat_message (chat_id, flow_id, user_id, is_bot, category, message, status,
                          turn_id, client_msg_id, created_at)
SELECT * FROM unnest($1::varchar[], $2::varchar[], $3::varchar[], $4::boolean[], $5::varchar[],
                     $6::text[], $7::varchar[], $8::varchar[], $9::varchar[], $10::timestamptz[])
ON CONFLICT (turn_id, category) DO NOTHING
RETURNING id, turn_id, category
"""

#: Stores one message the unbatched way, and reads back the row of a (turn, category) that
#: was stored already.
StoreOne = Callable[[NewMessage], Awaitable[ChatMessage]]


class MessageBatches:
    def __init__(self, lanes: DriverLanes, store_one: StoreOne) -> None:
        self._lanes = lanes
        self._store_one = store_one
        self._batcher: Batcher[NewMessage, ChatMessage] = Batcher(self._store_all)

    async def add(self, message: NewMessage) -> ChatMessage:
        return await self._batcher.submit(message)

    async def aclose(self) -> None:
        await self._batcher.aclose()

    async def _store_all(self, messages: Sequence[NewMessage]) -> list[ChatMessage]:
        now = datetime.now(UTC)
        columns: list[list[Any]] = [[] for _ in range(10)]
        for m in messages:
            row = (
                m.chat_id,
                m.flow_id,
                m.user_id,
                m.is_bot,
                m.category.value,
                m.message,
                None if m.status is None else m.status.value,
                m.turn_id,
                m.client_msg_id,
                now,
            )
            for column, value in zip(columns, row, strict=True):
                column.append(value)

        async def insert(driver: Any) -> dict[tuple[str, str], int]:
            rows = await driver.fetch(_INSERT, *columns)
            return {(row[1], row[2]): row[0] for row in rows}

        ids = await self._lanes.run(insert)
        stored: list[ChatMessage] = []
        for m in messages:
            new_id = ids.pop((m.turn_id, m.category.value), None)
            if new_id is None:  # the turn had this message already, or twice in this batch
                stored.append(await self._store_one(m))
            else:
                stored.append(m.stored(new_id, now))
        return stored
