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

On PostgreSQL a claim commits without waiting for the disk, and is proven durable right after,
off the connect's path (:meth:`ChatClaims.durability`):

- **Why.** Committed the usual way, a new chat's claim waits for PostgreSQL to flush the WAL to
  disk, and so does every connect queued behind it. On the benchmark's VM that flush takes
  ~0.1 ms on average but 20-245 ms at the tail (3,000 one-row commits at 400/s: p99.9 18 ms,
  max 245 ms; with ``synchronous_commit = off`` 1.1 and 2.8 ms), and each such stall held up
  every connect of those milliseconds. So the claims' lanes commit without the flush
  (``synchronous_commit = off`` for their sessions only). The row is visible to every other
  transaction at once, so the first user owns the chat at once, as the protocol says; what a
  crash of the database in the next moment could lose is the row.
- **The proof.** After a batch of claims has answered, their rows are locked (``FOR KEY
  SHARE``, which changes nothing) in a transaction on lanes that commit with the flush: that
  lock is a WAL record, so the commit waits until the WAL is on disk up to it, and with it
  every earlier commit, the claims' included. A row found with its owner there is durable,
  whatever happened between (a restart, a pooler in front): found is proof. A row not found
  was lost with a crash of the database (chats are never deleted): it is claimed again, on the
  flushing lanes, for the owner the admission was answered; if the id has meanwhile become
  another user's, the claim is lost. Concurrent proofs are one statement (a batcher of their
  own), which takes half the WAL of an ``UPDATE`` touching the rows and leaves no dead rows.
- **Until then** nothing relies on the claim beyond the database: the owner caches (this
  process's and Redis's) learn it only once proven, the chat's reads and writes wait for the
  proof, and the sockets admitted on a lost claim are closed (1013) to reconnect and claim again
  (``app.domain.admission``).

A server whose own ``synchronous_commit`` default is ``off`` flushes on its own schedule, and
the proof then proves no more than that server promises.
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
# The claims' rows, locked in a mode that blocks only their deletion or a change of their key
# (nothing does either to a chat).
# Locking a row writes a WAL record, so the transaction's commit waits for the flush (one that
# only read would not: PostgreSQL flushes at commit only what wrote WAL). The rows it returns
# are those still their asker's.
_POSTGRES_PROOF = """
SELECT chat_session.chat_id, chat_session.flow_id, chat_session.user_id
FROM chat_session
JOIN unnest($1::varchar[], $2::varchar[], $3::varchar[]) AS asked(chat_id, flow_id, user_id)
  ON chat_session.chat_id = asked.chat_id
 AND chat_session.flow_id = asked.flow_id
 AND chat_session.user_id = asked.user_id
FOR KEY SHARE OF chat_session
"""
_POSTGRES_OWNERS = (
    "SELECT chat_id, flow_id, user_id FROM chat_session WHERE chat_id = ANY($1::varchar[])"
)

_SQLITE_CLAIM = (
    "INSERT OR IGNORE INTO chat_session (chat_id, flow_id, user_id, created_at) VALUES (?, ?, ?, ?)"
)
_SQLITE_OWNERS = "SELECT chat_id, flow_id, user_id FROM chat_session WHERE chat_id IN ({})"


#: How often a proof that failed (the database away) is tried again before the claim is lost.
PROOF_RETRIES = 2
#: Seconds between those tries (about what a restart of the database takes).
PROOF_RETRY_AFTER = 1.0
#: Seconds a claim's proof waits for others to go with it, unless a call of its chat waits
#: for it (:meth:`ChatClaims.hurry`). Each proof is a commit that waits for a disk flush: sent
#: at once, one per batch of claims, they took the stores from 16 to 28 % of a core in the
#: benchmark's closed loop of new chats (about 1,000 a second).
PROOF_LINGER = 0.02


class ChatClaims:
    """``await claims.claim(session)``: the chat's owner, ``session`` itself if the id was free."""

    def __init__(
        self, engine: AsyncEngine, *, postgres: bool, flushing: DriverLanes | None = None
    ) -> None:
        """On PostgreSQL the claims keep lanes of their own that commit without the flush, and
        prove each claim on ``flushing`` (lanes that commit with it; required there); on
        SQLite a lane of its own on the engine's file."""
        self._lanes: DriverLanes | None = None
        self._sqlite: SqliteLane | None = None
        if postgres:
            if flushing is None:
                raise ValueError("claims on PostgreSQL need lanes that commit with the flush")
            self._lanes = DriverLanes(engine, commit_without_flush=True)
        else:
            self._sqlite = SqliteLane(_sqlite_file(engine))
            # created_at as SQLAlchemy would store it, so that its reads of the row agree.
            self._sqlite_time = _TABLE.c.created_at.type.bind_processor(engine.dialect)
        self._flushing = flushing
        self._batcher: Batcher[ChatSession, ChatSession] = Batcher(
            self._claim_postgres if postgres else self._claim_sqlite
        )
        # The proofs of claims answered, one statement a batch (one lane at a time).
        self._proofs: Batcher[ChatSession, bool] = Batcher(self._prove)
        #: Chats whose latest claim here is not proven durable yet: the future of its proof,
        #: and the owner the claim answered.
        self._unproven: dict[str, asyncio.Future[bool]] = {}
        self._answered: dict[str, ChatSession] = {}
        self._retrying: set[asyncio.Task[None]] = set()  # proofs waiting to be tried again
        self._closing = False

    async def claim(self, session: ChatSession) -> ChatSession:
        return await self._batcher.submit(session)

    def durability(self, chat_id: str) -> asyncio.Future[bool] | None:
        """While this process's latest claim of ``chat_id`` is not proven durable, the future
        of its proof (True: durable; False: the database lost it, and it could not be claimed
        again for the same owner); None once it is durable."""
        return self._unproven.get(chat_id)

    def hurry(self, chat_id: str) -> None:
        """A call of the chat waits for its claim's proof (a first message sent right after
        the connect): the proofs waiting to go are sent now, with one more for this claim
        (which answers only for it: a failure is the lingering proof's to retry)."""
        durable, owner = self._unproven.get(chat_id), self._answered.get(chat_id)
        if durable is None or durable.done() or owner is None or self._closing:
            return

        def proven(proof: asyncio.Future[bool]) -> None:
            if not proof.cancelled() and proof.exception() is None and proof.result():
                _resolve(durable, True)

        self._proofs.enqueue(owner).add_done_callback(proven)

    def _prove_later(self, owner: ChatSession, durable: asyncio.Future[bool], retries: int) -> None:
        proof = self._proofs.enqueue(owner, linger=PROOF_LINGER)
        proof.add_done_callback(partial(self._proven, owner, durable, retries))

    def _proven(
        self,
        owner: ChatSession,
        durable: asyncio.Future[bool],
        retries: int,
        proof: asyncio.Future[bool],
    ) -> None:
        if durable.done():
            return
        if proof.cancelled():  # shutting down
            durable.set_result(False)
            return
        error = proof.exception()
        if error is None:
            durable.set_result(proof.result())
        elif retries <= 0 or self._closing:
            logger.warning("chat %s: its claim could not be proven: %r", owner.chat_id, error)
            durable.set_result(False)
        else:  # the database away for a moment (the lanes retried once already)
            task = asyncio.get_running_loop().create_task(
                self._prove_again(owner, durable, retries - 1)
            )
            self._retrying.add(task)
            task.add_done_callback(self._retrying.discard)

    async def _prove_again(
        self, owner: ChatSession, durable: asyncio.Future[bool], retries: int
    ) -> None:
        try:
            await asyncio.sleep(PROOF_RETRY_AFTER)
        except asyncio.CancelledError:  # closing: not proven
            _resolve(durable, False)
            raise
        self._prove_later(owner, durable, retries)

    async def _prove(self, owners: Sequence[ChatSession]) -> list[bool]:
        """Whether each claim is durable, decided in transactions that commit with the flush;
        a claim whose row the database lost is made again there, for the same owner."""
        assert self._flushing is not None  # the PostgreSQL path

        async def prove(driver: Any) -> set[tuple[str, str, str]]:
            found = _rows(await _locked(driver, owners))
            # A crash of the database took these (chats are never deleted), or the id is
            # another's now. One each: a hurried proof may ride with the lingering one.
            lost = _first_of_each_id([o for o in owners if _row(o) not in found])
            if lost:
                logger.warning("%d chat claims not found: claimed again", len(lost))
                # Inserted by a statement that committed with the flush: durable.
                found |= _rows(await _inserted(driver, lost))
                # The others were claimed again by someone meanwhile: proven if by the owner.
                again = [o for o in lost if _row(o) not in found]
                if again:
                    found |= _rows(await _locked(driver, again))
            return found

        found = await self._flushing.run(prove)
        return [_row(o) in found for o in owners]

    def _settled(self, chat_id: str, durable: asyncio.Future[bool]) -> None:
        if self._unproven.get(chat_id) is durable and durable.result():
            del self._unproven[chat_id]
            del self._answered[chat_id]
        # A lost claim stays: the chat's reads and writes here keep failing until it is
        # claimed again (the admission that does so replaces it).

    async def aclose(self) -> None:
        """Answer the claims under way and send their proofs; then close the lanes. A proof
        waiting to be tried again is given up (its claim reported lost)."""
        self._closing = True
        for task in self._retrying:
            task.cancel()
        await asyncio.gather(*self._retrying, return_exceptions=True)
        # Not cancelled: each is one bounded statement, and a connection cancelled while it
        # was being opened or used is not one to give back to the pool. Claims first: a batch
        # of claims queues its proofs before it answers.
        await self._batcher.aclose()
        await self._proofs.aclose()
        if self._lanes is not None:
            await self._lanes.aclose()
        if self._sqlite is not None:
            await self._sqlite.aclose()

    async def _claim_postgres(self, asked: Sequence[ChatSession]) -> list[ChatSession]:
        assert self._lanes is not None  # the PostgreSQL path
        first = _first_of_each_id(asked)

        async def claim(driver: Any) -> dict[str, ChatSession]:
            owners = _owners(await _inserted(driver, first))
            taken = [s.chat_id for s in first if s.chat_id not in owners]
            if taken:  # committed before this claim returned: chats are never deleted
                owners.update(_owners(await driver.fetch(_POSTGRES_OWNERS, taken)))
            return owners

        owners = await self._lanes.run(claim)
        # Every answer is proven, the owners of ids taken already too: another process's
        # claim may be as unflushed as this batch's. Queued before the batch answers, so that
        # closing sends them.
        loop = asyncio.get_running_loop()
        for owner in owners.values():
            durable: asyncio.Future[bool] = loop.create_future()
            self._unproven[owner.chat_id] = durable
            self._answered[owner.chat_id] = owner
            durable.add_done_callback(partial(self._settled, owner.chat_id))
            self._prove_later(owner, durable, PROOF_RETRIES)
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


async def _inserted(driver: Any, sessions: Sequence[ChatSession]) -> list[Any]:
    """The rows of ``sessions`` (one per id) that the claim statement inserted."""
    return await driver.fetch(  # type: ignore[no-any-return]
        _POSTGRES_CLAIM,
        [s.chat_id for s in sessions],
        [s.flow_id for s in sessions],
        [s.user_id for s in sessions],
        datetime.now(UTC),
    )


async def _locked(driver: Any, owners: Sequence[ChatSession]) -> list[Any]:
    """The rows of ``owners`` that are still theirs, locked (see ``_POSTGRES_PROOF``)."""
    return await driver.fetch(  # type: ignore[no-any-return]
        _POSTGRES_PROOF,
        [o.chat_id for o in owners],
        [o.flow_id for o in owners],
        [o.user_id for o in owners],
    )


def _row(owner: ChatSession) -> tuple[str, str, str]:
    return owner.chat_id, owner.flow_id, owner.user_id


def _rows(rows: Sequence[Any]) -> set[tuple[str, str, str]]:
    """(chat_id, flow_id, user_id) of each row: a claim is proven for its owner only."""
    return {(row[0], row[1], row[2]) for row in rows}


def _resolve(future: asyncio.Future[bool], durable: bool) -> None:
    if not future.done():
        future.set_result(durable)
