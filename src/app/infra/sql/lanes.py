"""Connections of SQLAlchemy's pool kept checked out for the hot statements, used through
asyncpg directly.

A claim of a chat or the storing of a message is one statement, run for every connect and
every turn. Through SQLAlchemy each also paid a pool checkout and return (greenlet hops, pool
events, reset on return): measured at ~230 µs of CPU per statement against ~110 µs for the
statement itself (``bench/claim_cost.py``). A lane is a pooled connection held for as long as
the process runs, so a statement costs only the driver's work.

The pool still owns the connections (they count against its size, and ``engine.dispose()``
closes them once the lanes are returned by :meth:`DriverLanes.aclose`). A lane whose
connection failed is invalidated and replaced; a statement that failed on a connection that
had died while idle (a restart of the database, a proxy's idle timeout) is retried once on a
fresh one, which is safe because every statement sent through lanes is idempotent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.infra.sql.sessions import connection_failure, database_errors_as_unavailable

Result = TypeVar("Result")

#: Seconds a statement on a lane may take (it is one short statement; the database is then
#: taken for unreachable, and the statement retried once on a fresh connection).
STATEMENT_TIMEOUT = 5.0

# Every statement sent on a lane finds its rows by primary key or unique index (a claim, a
# message insert), and asyncpg prepares each once per connection, so PostgreSQL plans it once
# and keeps a generic plan for the lane's life. Made while the table was small and not yet
# analysed (a fresh database, a new deployment's first burst), that plan is a sequential scan
# and hash join, and it stays one while the table grows: measured at 0.2 ms of PostgreSQL CPU
# per claim with 2,000 chats, 2.2 ms with 24,000 (linear), until autovacuum's next ANALYZE
# replans it. With sequential scans priced out the plans are index lookups at any size (flat
# at 0.15 ms). The setting is the lane's session's only: reset before the pool gets it back.
_INDEXES_ONLY = "SET enable_seqscan = off"
_AS_BEFORE = "RESET enable_seqscan"
#: For the lanes of chat claims (app.infra.sql.claims says why, and what makes it safe).
_COMMIT_WITHOUT_FLUSH = "SET synchronous_commit = off"
_FLUSH_AS_BEFORE = "RESET synchronous_commit"


class DriverLanes:
    def __init__(self, engine: AsyncEngine, *, commit_without_flush: bool = False) -> None:
        """``commit_without_flush``: the lanes' statements commit without waiting for the WAL
        to reach the disk (``synchronous_commit = off`` for their sessions only)."""
        self._engine = engine
        self._idle: list[tuple[AsyncConnection, Any]] = []
        self._setup = _INDEXES_ONLY
        self._reset = _AS_BEFORE
        if commit_without_flush:
            # One simple-protocol round trip for both settings (no parameters).
            self._setup = f"{_INDEXES_ONLY}; {_COMMIT_WITHOUT_FLUSH}"
            self._reset = f"{_AS_BEFORE}; {_FLUSH_AS_BEFORE}"

    async def run(self, statement: Callable[[Any], Awaitable[Result]]) -> Result:
        """``await statement(asyncpg_connection)`` on a lane; connection failures leave as
        :class:`~app.domain.errors.StoreUnavailable`. ``statement`` must be idempotent."""
        with database_errors_as_unavailable():
            try:
                return await self._run_once(statement)
            except Exception as exc:
                if connection_failure(exc) is None:
                    raise
                return await self._run_once(statement)  # on a fresh connection

    async def _run_once(self, statement: Callable[[Any], Awaitable[Result]]) -> Result:
        fresh = not self._idle
        lane = self._idle.pop() if self._idle else await self._checkout()
        connection, driver = lane
        if driver.is_closed():  # the server went away while the lane was idle
            await connection.invalidate()
            await connection.close()
            connection, driver = lane = await self._checkout()
            fresh = True
        try:
            # Bounded: the batches behind this one wait for it. A timeout is an OSError, so
            # the connection is dropped as lost (a hung connection is not reused).
            async with asyncio.timeout(STATEMENT_TIMEOUT):
                if fresh:  # here, so that a pooled connection found dead is taken for lost
                    await driver.execute(self._setup)
                result = await statement(driver)
        except Exception as exc:
            lost = connection_failure(exc) is not None or driver.is_closed()
            if not lost:
                self._idle.append(lane)
                raise
            # Sent past SQLAlchemy, so the pool did not see the connection die: tell it.
            await connection.invalidate(exc)
            await connection.close()
            # asyncpg says "connection is closed" with an InterfaceError, which is also its
            # error for misuse: a closed connection is what tells the two apart.
            raise ConnectionError(f"database connection lost: {type(exc).__name__}") from exc
        self._idle.append(lane)
        return result

    async def _checkout(self) -> tuple[AsyncConnection, Any]:
        connection = await self._engine.connect()
        try:
            driver = (await connection.get_raw_connection()).driver_connection
        except BaseException:
            await connection.close()
            raise
        return connection, driver

    async def aclose(self) -> None:
        """Return every lane to the pool, with the session's settings as they were."""
        idle, self._idle = self._idle, []
        for connection, driver in idle:
            try:
                await driver.execute(self._reset)
            except Exception as exc:  # a connection that cannot say so is not given back
                await connection.invalidate(exc)
            await connection.close()
