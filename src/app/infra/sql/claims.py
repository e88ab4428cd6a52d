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

On PostgreSQL a claim commits without waiting for the WAL's flush, and
:meth:`ChatClaims.durability` tells when it is flushed (:mod:`app.infra.sql.claim_fence`).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any, cast

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from app.domain.chats import ChatSession
from app.infra.batching import Batcher
from app.infra.sql.claim_fence import ClaimFence
from app.infra.sql.lanes import DriverLanes
from app.infra.sql.models import ChatSessionRow
from app.infra.sql.sqlite_lane import SqliteLane, transaction

logger = logging.getLogger(__name__)

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
# Claims' rows touched (a new version of each, with the same values): a transaction that
# writes, so that its synchronous commit flushes the WAL, the claims' commits with it. The ids
# it returns are those whose row is still the owner's.
_POSTGRES_TOUCH = """
UPDATE chat_session SET flow_id = chat_session.flow_id
FROM unnest($1::varchar[], $2::varchar[], $3::varchar[]) AS asked(chat_id, flow_id, user_id)
WHERE chat_session.chat_id = asked.chat_id
  AND chat_session.flow_id = asked.flow_id
  AND chat_session.user_id = asked.user_id
RETURNING chat_session.chat_id
"""
_POSTGRES_OWNERS = (
    "SELECT chat_id, flow_id, user_id FROM chat_session WHERE chat_id = ANY($1::varchar[])"
)

_SQLITE_CLAIM = (
    "INSERT OR IGNORE INTO chat_session (chat_id, flow_id, user_id, created_at) VALUES (?, ?, ?, ?)"
)
_SQLITE_OWNERS = "SELECT chat_id, flow_id, user_id FROM chat_session WHERE chat_id IN ({})"


#: A claim's answer, and on PostgreSQL the future of its flush (None: durable already).
_Claimed = tuple[ChatSession, "asyncio.Future[bool] | None"]
#: How often a claim whose flush the fence could not prove is made again before it is lost.
CLAIMS_AGAIN = 2


class ChatClaims:
    """``await claims.claim(session)``: the chat's owner, ``session`` itself if the id was free."""

    def __init__(
        self, engine: AsyncEngine, *, postgres: bool, flushing: DriverLanes | None = None
    ) -> None:
        """On PostgreSQL the claims keep lanes of their own that commit without the flush
        (and a fence that sees it), and prove a claim at once on ``flushing`` (lanes that
        commit with it: :meth:`prove_now`); on SQLite a lane of its own on the engine's
        file."""
        self._lanes: DriverLanes | None = None
        self._fence: ClaimFence | None = None
        self._sqlite: SqliteLane | None = None
        if postgres:
            self._lanes = DriverLanes(engine, commit_without_flush=True)
            self._fence = ClaimFence(engine)
        else:
            self._sqlite = SqliteLane(_sqlite_file(engine))
            # created_at as SQLAlchemy would store it, so that its reads of the row agree.
            self._sqlite_time = _TABLE.c.created_at.type.bind_processor(engine.dialect)
        self._batcher: Batcher[ChatSession, _Claimed] = Batcher(
            self._claim_postgres if postgres else self._claim_sqlite
        )
        #: Chats whose latest claim here is not known to be flushed: the future of it.
        self._unflushed: dict[str, asyncio.Future[bool]] = {}
        #: The owner each of those claims answered (what :meth:`prove_now` looks for).
        self._answered: dict[str, ChatSession] = {}
        self._again: set[asyncio.Task[None]] = set()  # claims being made again
        self._flushing = flushing
        # Proofs of concurrent first messages, one statement a batch (one lane at a time).
        self._proofs: Batcher[ChatSession, bool] = Batcher(self._touch)
        self._closing = False

    async def claim(self, session: ChatSession) -> ChatSession:
        owner, flushed = await self._batcher.submit(session)
        if flushed is not None:
            durable: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            self._unflushed[session.chat_id] = durable
            self._answered[session.chat_id] = owner
            durable.add_done_callback(partial(self._settled, session.chat_id))
            self._follow(owner, flushed, durable, CLAIMS_AGAIN)
        return owner

    def durability(self, chat_id: str) -> asyncio.Future[bool] | None:
        """While this process's latest claim of ``chat_id`` is not known to be flushed, the
        future of it (True: durable; False: the database may have lost it, and it could not
        be claimed again for the same owner); None once it is durable."""
        return self._unflushed.get(chat_id)

    def _follow(
        self,
        owner: ChatSession,
        flushed: asyncio.Future[bool],
        durable: asyncio.Future[bool],
        again: int,
    ) -> None:
        def settled(done: asyncio.Future[bool]) -> None:
            if durable.done():
                return
            if done.result():
                durable.set_result(True)
            elif again <= 0 or self._closing:
                durable.set_result(False)
            else:
                task = asyncio.get_running_loop().create_task(
                    self._claim_again(owner, durable, again - 1)
                )
                self._again.add(task)
                task.add_done_callback(self._again.discard)

        flushed.add_done_callback(settled)

    async def _claim_again(
        self, owner: ChatSession, durable: asyncio.Future[bool], again: int
    ) -> None:
        """The fence could not prove the flush (its connection failed: most often a restart
        of the database, which may or may not have lost the row). The answer already given
        is claimed again, for the owner it named: the row is there after all, or it is put
        back; only if the id now has another owner was the answer lost."""
        try:
            now, flushed = await self._batcher.submit(owner)
        except Exception as exc:  # the database away, or worse: the claim is not proven
            logger.warning("chat %s: its claim could not be made again: %r", owner.chat_id, exc)
            _resolve(durable, False)
            return
        if now != owner or flushed is None:
            _resolve(durable, now == owner)
            return
        self._follow(owner, flushed, durable, again)

    async def prove_now(self, chat_id: str) -> None:
        """A call of the chat waits for its claim's flush (a first message sent right after
        the connect): rather than wait for the WAL writer (up to ``wal_writer_delay``, 200 ms
        by default), touch the claim's row on the flushing lanes (whose commits wait for the
        flush). Found, it exists on the server as it is now, and is flushed with everything
        before it; not found, the fence and the claim made again decide, as before."""
        durable, owner = self._unflushed.get(chat_id), self._answered.get(chat_id)
        if durable is None or durable.done() or owner is None or self._flushing is None:
            return
        try:
            found = await self._proofs.submit(owner)
        except Exception as exc:  # the fence decides
            logger.info("chat %s: its claim could not be proven at once: %r", chat_id, exc)
            return
        if found:
            _resolve(durable, True)

    async def _touch(self, owners: Sequence[ChatSession]) -> list[bool]:
        assert self._flushing is not None
        rows = await self._flushing.run(
            lambda driver: driver.fetch(
                _POSTGRES_TOUCH,
                [o.chat_id for o in owners],
                [o.flow_id for o in owners],
                [o.user_id for o in owners],
            )
        )
        found = {row[0] for row in rows}
        return [o.chat_id in found for o in owners]

    def _settled(self, chat_id: str, durable: asyncio.Future[bool]) -> None:
        if self._unflushed.get(chat_id) is durable and durable.result():
            del self._unflushed[chat_id]
            self._answered.pop(chat_id, None)
        # A lost claim stays: the chat's reads and writes here keep failing until it is
        # claimed again (the admission that does so replaces it).

    async def aclose(self) -> None:
        """Wait for the claims under way, then close the lanes, the fence and the SQLite lane."""
        self._closing = True
        # Not cancelled: each is one bounded statement, and a connection cancelled while it
        # was being opened or used is not one to give back to the pool.
        await asyncio.gather(*self._again, return_exceptions=True)
        await self._proofs.aclose()
        await self._batcher.aclose()
        if self._fence is not None:
            await self._fence.aclose()
        if self._lanes is not None:
            await self._lanes.aclose()
        if self._sqlite is not None:
            await self._sqlite.aclose()

    async def _claim_postgres(self, asked: Sequence[ChatSession]) -> list[_Claimed]:
        assert self._lanes is not None and self._fence is not None  # the PostgreSQL path
        first = _first_of_each_id(asked)
        # Opened before the claims are sent: what it sees later cannot straddle a restart.
        generation = await self._fence.open()

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

        owners = await self._lanes.run(claim)
        # The owners of ids taken already were read here too: another process's claim may be
        # as unflushed as this batch's, and the same flush covers it.
        flushed = self._fence.watch(generation)
        return [(owners[s.chat_id], flushed) for s in asked]

    async def _claim_sqlite(self, asked: Sequence[ChatSession]) -> list[_Claimed]:
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
        return [(owners[s.chat_id], None) for s in asked]


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


def _resolve(future: asyncio.Future[bool], durable: bool) -> None:
    if not future.done():  # the fence, a claim made again and prove_now may all answer
        future.set_result(durable)
