"""Claiming chat ids: the database statement of every admission to a chat this process has not
seen yet (a new chat, or a reconnect after a deploy, when the process is new).

Concurrent claims are joined (:class:`~app.infra.batching.Batcher`) and a batch is one
statement that claims the new ids and reads the owners of the known ones at once:

- PostgreSQL: ``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING RETURNING`` in a CTE,
  with the owners of the ids that were already taken read in the same statement (one round
  trip whatever the mix). The statement is sent with the driver's own ``fetch`` on a lane
  (:mod:`app.infra.sql.lanes`: a pooled connection kept checked out), outside a transaction
  (one statement is atomic by itself): in the benchmark SQLAlchemy's execution layer (pool
  checkout, greenlet hop, cursor adapter, result wrapping, BEGIN and COMMIT) cost twice the
  driver's CPU per claim, and the ``AsyncSession`` twice that again (``bench/claim_cost.py``).
- SQLite (embedded, one process): the insert and, for ids that were taken, a select, in one
  transaction through SQLAlchemy Core; a "round trip" there is a hop to aiosqlite's thread.

The database arbitrates, so a claim is atomic across processes: of two first connections to
a new id, exactly one inserts it, and the other reads the winner's row.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.domain.chats import ChatSession
from app.infra.batching import Batcher
from app.infra.sql.lanes import DriverLanes
from app.infra.sql.models import ChatSessionRow
from app.infra.sql.sessions import database_errors_as_unavailable

_TABLE = cast(Table, ChatSessionRow.__table__)

# ``claimed`` holds the rows this statement inserted; the second branch reads, in the
# statement's snapshot (which does not see them), the rows that existed before. An id that
# another transaction inserted but had not committed when the snapshot was taken is in
# neither: it is read again afterwards.
_POSTGRES_CLAIM = """
WITH asked AS (
    SELECT * FROM unnest($1::varchar[], $2::varchar[], $3::varchar[])
        AS asked(chat_id, flow_id, user_id)
), claimed AS (
    INSERT INTO chat_session (chat_id, flow_id, user_id, created_at)
    SELECT chat_id, flow_id, user_id, $4::timestamptz FROM asked
    ON CONFLICT (chat_id) DO NOTHING
    RETURNING chat_id, flow_id, user_id
)
SELECT chat_id, flow_id, user_id FROM claimed
UNION ALL
SELECT s.chat_id, s.flow_id, s.user_id FROM chat_session s JOIN asked USING (chat_id)
WHERE s.chat_id NOT IN (SELECT chat_id FROM claimed)
"""
_POSTGRES_OWNERS = (
    "SELECT chat_id, flow_id, user_id FROM chat_session WHERE chat_id = ANY($1::varchar[])"
)

_SQLITE_CLAIM = (
    _TABLE.insert()
    .values({column.name: bindparam(column.name, type_=column.type) for column in _TABLE.c})
    .prefix_with("OR IGNORE")
)
_SQLITE_OWNERS = select(_TABLE.c.chat_id, _TABLE.c.flow_id, _TABLE.c.user_id).where(
    _TABLE.c.chat_id.in_(bindparam("chat_ids", expanding=True))
)


class ChatClaims:
    """``await claims.claim(session)``: the chat's owner, ``session`` itself if the id was free."""

    def __init__(self, engine: AsyncEngine, lanes: DriverLanes | None) -> None:
        """``lanes``: where the statements run on PostgreSQL (its owner closes them); None on
        SQLite."""
        self._engine = engine
        self._lanes = lanes
        self._batcher: Batcher[ChatSession, ChatSession] = Batcher(
            self._claim_sqlite if lanes is None else self._claim_postgres
        )

    async def claim(self, session: ChatSession) -> ChatSession:
        return await self._batcher.submit(session)

    async def aclose(self) -> None:
        """Wait for the claims under way."""
        await self._batcher.aclose()

    async def _claim_postgres(self, asked: Sequence[ChatSession]) -> list[ChatSession]:
        first = _first_of_each_id(asked)

        async def claim(driver: Any) -> dict[str, ChatSession]:
            rows = await driver.fetch(
                _POSTGRES_CLAIM,
                [s.chat_id for s in first],
                [s.flow_id for s in first],
                [s.user_id for s in first],
                datetime.now(UTC),
            )
            owners = _owners(rows)
            missing = [s.chat_id for s in first if s.chat_id not in owners]
            if missing:  # inserted meanwhile by a transaction that has now committed
                owners.update(_owners(await driver.fetch(_POSTGRES_OWNERS, missing)))
            return owners

        assert self._lanes is not None  # the PostgreSQL path
        owners = await self._lanes.run(claim)
        return [owners[s.chat_id] for s in asked]

    async def _claim_sqlite(self, asked: Sequence[ChatSession]) -> list[ChatSession]:
        first = _first_of_each_id(asked)
        now = datetime.now(UTC)
        with database_errors_as_unavailable():
            async with self._engine.begin() as connection:
                # INSERT OR IGNORE, one row per id: SQLAlchemy sends them as one executemany.
                await connection.execute(
                    _SQLITE_CLAIM,
                    [
                        {
                            "chat_id": s.chat_id,
                            "flow_id": s.flow_id,
                            "user_id": s.user_id,
                            "created_at": now,
                        }
                        for s in first
                    ],
                )
                result = await connection.execute(
                    _SQLITE_OWNERS, {"chat_ids": [s.chat_id for s in first]}
                )
                owners = _owners(result.all())
        return [owners[s.chat_id] for s in asked]


def _first_of_each_id(asked: Sequence[ChatSession]) -> list[ChatSession]:
    """One claim per id: of two connections asking for the same new id in one batch, the
    first asks (and wins); both are answered with the row."""
    first: dict[str, ChatSession] = {}
    for session in asked:
        first.setdefault(session.chat_id, session)
    return list(first.values())


def _owners(rows: Sequence[Any]) -> dict[str, ChatSession]:
    return {row[0]: ChatSession(chat_id=row[0], flow_id=row[1], user_id=row[2]) for row in rows}
