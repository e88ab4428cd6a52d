"""Claiming chat ids: the database statement of every admission to a chat this process has not
seen yet (a new chat, or a reconnect after a deploy, when the process is new).

Concurrent claims are joined (:class:`~app.infra.batching.Batcher`): a batch is one statement
that claims the ids still free, and on PostgreSQL a second for the owners of the others:

- PostgreSQL: ``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING RETURNING``: the
  ids it inserted are this batch's; the owners of the others (ids taken already: a reconnect
  that neither this process nor the shared owner cache remembered) are read by a second
  statement, sent only if there are any. A new chat, the common case here, is one round trip.
  (One statement that also read the taken ids' owners, a CTE joined back to the table, cost
  the database 100-120 µs more per claim of a new chat than the insert alone, 345-360
  against 235-260 µs, measured sequentially on a table of 200,000 chats.) The statements
  are sent with the driver's own ``fetch`` on a lane
  (:mod:`app.infra.sql.lanes`: a pooled connection kept checked out), outside a transaction
  (one statement is atomic by itself): in the benchmark SQLAlchemy's execution layer (pool
  checkout, greenlet hop, cursor adapter, result wrapping, BEGIN and COMMIT) cost twice the
  driver's CPU per claim, and the ``AsyncSession`` twice that again (``bench/claim_cost.py``).
- SQLite (embedded): the insert and a select of the owners in one transaction, run as one
  function on the lane's thread (:mod:`app.infra.sql.sqlite_lane`): one hop from the event
  loop per batch, where SQLAlchemy over aiosqlite made about ten.

The database arbitrates, so a claim is atomic across processes: of two first connections to
a new id, exactly one inserts it, and the other reads the winner's row.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from app.domain.chats import ChatSession
from app.infra.batching import Batcher
from app.infra.sql.lanes import DriverLanes
from app.infra.sql.models import ChatSessionRow
from app.infra.sql.sqlite_lane import SqliteLane, transaction

_TABLE = cast(Table, ChatSessionRow.__table__)

# The rows this statement inserted. An id it did not insert was taken already, or by a
# transaction that has committed by the time the statement returns (ON CONFLICT waits for an
# insert of the same id under way, and inserts after all if that one rolls back).
_POSTGRES_CLAIM = """
INSERT INTO chat_session (chat_id, flow_id, user_id, created_at)
SELECT chat_id, flow_id, user_id, $4::timestamptz
FROM unnest($1::varchar[], $2::varchar[], $3::varchar[]) AS asked(chat_id, flow_id, user_id)
ON CONFLICT (chat_id) DO NOTHING
RETURNING chat_id, flow_id, user_id
"""
_POSTGRES_OWNERS = (
    "SELECT chat_id, flow_id, user_id FROM chat_session WHERE chat_id = ANY($1::varchar[])"
)

_SQLITE_CLAIM = (
    "INSERT OR IGNORE INTO chat_session (chat_id, flow_id, user_id, created_at) VALUES (?, ?, ?, ?)"
)
_SQLITE_OWNERS = "SELECT chat_id, flow_id, user_id FROM chat_session WHERE chat_id IN ({})"


class ChatClaims:
    """``await claims.claim(session)``: the chat's owner, ``session`` itself if the id was free."""

    def __init__(self, engine: AsyncEngine, lanes: DriverLanes | None) -> None:
        """``lanes``: where the statements run on PostgreSQL (its owner closes them); None on
        SQLite, whose lane the claims keep themselves (the engine's file)."""
        self._lanes = lanes
        self._sqlite: SqliteLane | None = None
        if lanes is None:
            self._sqlite = SqliteLane(_sqlite_file(engine))
            # created_at as SQLAlchemy would store it, so that its reads of the row agree.
            self._sqlite_time = _TABLE.c.created_at.type.bind_processor(engine.dialect)
        self._batcher: Batcher[ChatSession, ChatSession] = Batcher(
            self._claim_sqlite if lanes is None else self._claim_postgres
        )

    async def claim(self, session: ChatSession) -> ChatSession:
        return await self._batcher.submit(session)

    async def aclose(self) -> None:
        """Wait for the claims under way, then close the SQLite lane (if any)."""
        await self._batcher.aclose()
        if self._sqlite is not None:
            await self._sqlite.aclose()

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
            taken = [s.chat_id for s in first if s.chat_id not in owners]
            if taken:  # committed before this claim returned: chats are never deleted
                owners.update(_owners(await driver.fetch(_POSTGRES_OWNERS, taken)))
            return owners

        assert self._lanes is not None  # the PostgreSQL path
        owners = await self._lanes.run(claim)
        return [owners[s.chat_id] for s in asked]

    async def _claim_sqlite(self, asked: Sequence[ChatSession]) -> list[ChatSession]:
        first = _first_of_each_id(asked)
        now = datetime.now(UTC)
        created_at = now if self._sqlite_time is None else self._sqlite_time(now)
        rows = [(s.chat_id, s.flow_id, s.user_id, created_at) for s in first]
        ids = [s.chat_id for s in first]

        def claim(connection: sqlite3.Connection) -> list[Any]:
            with transaction(connection):
                connection.executemany(_SQLITE_CLAIM, rows)
                owners = _SQLITE_OWNERS.format(", ".join("?" * len(ids)))
                return connection.execute(owners, ids).fetchall()

        assert self._sqlite is not None  # the SQLite path
        owners = _owners(await self._sqlite.run(claim))
        return [owners[s.chat_id] for s in asked]


def _sqlite_file(engine: AsyncEngine) -> str:
    """The engine's database file. A private in-memory database would be another one on the
    lane's connection (and the migrations' own): the settings refuse it."""
    path = engine.url.database
    if not path or path == ":memory:" or path.startswith("file:"):
        raise ValueError("the embedded database must be a file path")
    return path


def _first_of_each_id(asked: Sequence[ChatSession]) -> list[ChatSession]:
    """One claim per id: of two connections asking for the same new id in one batch, the
    first asks (and wins); both are answered with the row."""
    first: dict[str, ChatSession] = {}
    for session in asked:
        first.setdefault(session.chat_id, session)
    return list(first.values())


def _owners(rows: Sequence[Any]) -> dict[str, ChatSession]:
    return {row[0]: ChatSession(chat_id=row[0], flow_id=row[1], user_id=row[2]) for row in rows}
