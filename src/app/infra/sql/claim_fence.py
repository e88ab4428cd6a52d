"""When a chat's claim is durable, on PostgreSQL: claims commit without waiting for the disk.

A new chat's claim is an INSERT on the path of its connect. Committed the usual way, it waits for
PostgreSQL to flush the WAL to disk, and so does every connect queued behind it. On the
benchmark's VM that flush takes ~0.1 ms on average but 20-245 ms at the tail (3,000 one-row
commits at 400/s: p99.9 18 ms, max 245 ms; with ``synchronous_commit = off`` 1.1 and 2.8 ms), and
each such stall held up every connect of those milliseconds. So claims commit without the flush
(their lanes: ``synchronous_commit = off``). The row is visible to every other transaction at
once, so the first user owns the chat at once, as the protocol says; what a crash of the
database in the next few hundred milliseconds (``wal_writer_delay``) could lose is the row.

So nothing relies on a claim beyond the database until it is flushed: the owner caches (this
process's and Redis's) learn it only then, the chat's reads and writes wait for it, and the
sockets admitted on a claim the database lost are closed (1013) to reconnect and claim again
(``app.domain.admission``). This fence tells which: after a batch of claims has committed, it
reads the WAL's insert position (at or past the claims' commit records) and then polls the flush
position until it has passed that, on one connection opened before the claims were sent. A
restart of the server, crash recovery included, ends every connection, so the connection that
saw both proves that no restart came between; when it fails, every claim it watched is taken
as lost. A claim whose flush is not seen within ``GIVE_UP_AFTER`` is taken as lost too.

Behind a pooler that keeps client connections across a server restart (PgBouncer) that proof
does not hold; point ``FLOWGATE_DATABASE_URL`` at the server itself, or run the server with
``synchronous_commit = off`` knowingly. A server whose own default is ``off`` flushes on its
own schedule, and the fence then reports what it did.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.infra.sql.sessions import database_errors_as_unavailable

logger = logging.getLogger(__name__)

#: How often the flush position is read while claims wait for it. The WAL writer flushes what
#: committed without waiting every ``wal_writer_delay`` (200 ms by default).
POLL_INTERVAL = 0.02
#: A claim whose flush has not been seen by then is taken as lost (its sockets reconnect).
GIVE_UP_AFTER = 10.0
#: Seconds one reading may take before the connection is taken for lost.
READ_TIMEOUT = 5.0

# Where the last record inserted ends, and how far the WAL is flushed, in bytes from the start
# of the WAL (comparable integers: asyncpg has no codec for pg_lsn). The insert position is
# where the next record starts: when the last one ended at a page boundary, that is past the
# next page's header (24 bytes; 40 at the start of a segment), which no flush reaches until
# more WAL comes, so the header is taken off. An idle server would otherwise never confirm a
# claim that ended a page (one in ~340).
_POSITIONS = """
SELECT CASE
         WHEN inserted % pg_size_bytes(current_setting('wal_segment_size')) = 40
           THEN inserted - 40
         WHEN inserted % current_setting('wal_block_size')::bigint = 24 THEN inserted - 24
         ELSE inserted
       END,
       flushed
FROM (SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint AS inserted,
             (pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::bigint AS flushed) AS positions
"""


class _Watched:
    """Claims that committed together, waiting for the flush to pass ``target``."""

    __slots__ = ("future", "since", "target")

    def __init__(self, future: asyncio.Future[bool]) -> None:
        self.future = future
        self.since = time.monotonic()
        self.target: int | None = None  # the insert position read after they committed


class ClaimFence:
    """``generation = await fence.open()`` before claims are sent; ``fence.watch(generation)``
    once they have committed: a future that is True once they are flushed, False if lost."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        poll_interval: float = POLL_INTERVAL,
        give_up_after: float = GIVE_UP_AFTER,
    ) -> None:
        self._engine = engine
        self._poll_interval = poll_interval
        self._give_up_after = give_up_after
        self._connection: AsyncConnection | None = None
        self._driver: Any = None
        #: Bumped whenever the connection is dropped: claims sent before were watched by it.
        self._generation = 0
        self._opening = asyncio.Lock()
        self._watched: list[_Watched] = []
        self._poller: asyncio.Task[None] | None = None
        self._closed = False

    async def open(self) -> int:
        """The connection the next claims are watched on, opened now if there is none: its
        generation, for :meth:`watch`."""
        if self._driver is not None and not self._driver.is_closed():
            return self._generation
        async with self._opening:
            if self._driver is not None and self._driver.is_closed():
                await self._drop(ConnectionError("the fence's connection closed"))
            if self._driver is None:
                with database_errors_as_unavailable():
                    connection = await self._engine.connect()
                    try:
                        raw = await connection.get_raw_connection()
                    except BaseException:
                        await connection.close()
                        raise
                self._connection, self._driver = connection, raw.driver_connection
            return self._generation

    def watch(self, generation: int) -> asyncio.Future[bool]:
        """Claims that committed after :meth:`open` answered ``generation``: True once the
        database has flushed them, False if it may have lost them."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if generation != self._generation or self._driver is None or self._closed:
            future.set_result(False)  # the connection that was to watch them is gone
            return future
        self._watched.append(_Watched(future))
        if self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll())
        return future

    async def aclose(self) -> None:
        """Stop watching (the claims still watched are reported lost) and return the
        connection, once a reading under way has come back (not cancelled: a connection
        cancelled mid-statement is not one to give back)."""
        self._closed = True
        watched, self._watched = self._watched, []
        for w in watched:
            _resolve(w.future, False)
        if self._poller is not None:
            await asyncio.gather(self._poller, return_exceptions=True)
        await self._drop(None)

    async def _poll(self) -> None:
        try:
            while self._watched:
                # Claims that committed before this reading was sent are behind its insert
                # position; those that commit while it is under way wait for the next one.
                untargeted = [w for w in self._watched if w.target is None]
                driver = self._driver
                try:
                    async with asyncio.timeout(READ_TIMEOUT):
                        inserted, flushed = await driver.fetchrow(_POSITIONS)
                except Exception as exc:  # lost, hung or refused: nothing it watched is proven
                    if driver is self._driver:
                        await self._drop(exc)
                    continue  # claims watched since are on a newer connection
                for watched in untargeted:
                    watched.target = inserted
                self._settle(flushed)
                if self._watched:
                    await asyncio.sleep(self._poll_interval)
        finally:
            self._poller = None

    def _settle(self, flushed: int) -> None:
        give_up = time.monotonic() - self._give_up_after
        still: list[_Watched] = []
        for watched in self._watched:
            if watched.target is not None and watched.target <= flushed:
                _resolve(watched.future, True)
            elif watched.since < give_up:
                logger.warning("a chat claim's flush was not seen in time: taken as lost")
                _resolve(watched.future, False)
            else:
                still.append(watched)
        self._watched = still

    async def _drop(self, error: BaseException | None) -> None:
        """Forget the connection; every claim it watched is reported lost."""
        if error is not None:
            logger.warning("chat claims' fence lost its connection: %r", error)
        watched, self._watched = self._watched, []
        for w in watched:
            _resolve(w.future, False)
        connection, driver = self._connection, self._driver
        self._connection, self._driver = None, None
        self._generation += 1
        if connection is None:
            return
        if error is not None or driver.is_closed():  # not one to give back to the pool
            try:
                await connection.invalidate(error if isinstance(error, Exception) else None)
            except Exception as exc:  # gone with the server already
                logger.debug("invalidating the fence's connection: %r", exc)
        try:
            await connection.close()
        except Exception as exc:
            logger.debug("closing the fence's connection: %r", exc)


def _resolve(future: asyncio.Future[bool], durable: bool) -> None:
    if not future.done():
        future.set_result(durable)
