"""The embedded database's hot statements in one hop: a connection of the standard library's
``sqlite3`` on a thread of its own, the SQLite counterpart of :mod:`app.infra.sql.lanes`.

Through SQLAlchemy and aiosqlite every step of a claim is a round trip to aiosqlite's thread
and back through the event loop: the pool checkout, each statement, the cursor it opens, its
rows, its close, the commit (about ten hops). Measured one claim after another, 810 µs of
CPU per claim on one core (the loop and the thread take turns on it), against 100 µs when
the whole transaction is one function run on a thread that owns its connection; at a fixed
400 connects/s the old path was a third of the server's CPU. aiosqlite has no public way to
run a function on its thread, so the lane keeps its own (one thread, one connection: SQLite
has one writer at a time anyway).

The file is the engine's: the lane's connection is configured like the engine's own
(:func:`app.infra.sql.config.configure_sqlite_connection`), and waits for another process's
write lock as long (the busy timeout).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

from app.infra.sql.config import SQLITE_BUSY_TIMEOUT, configure_sqlite_connection
from app.infra.sql.sessions import database_errors_as_unavailable

Result = TypeVar("Result")


class SqliteLane:
    """``await lane.run(work)``: ``work(connection)`` on the lane's thread; a locked or
    unopenable file leaves as :class:`~app.domain.errors.StoreUnavailable`."""

    def __init__(self, path: str) -> None:
        """``path``: the database file (made by the migrations; the lane creates nothing)."""
        self._path = path
        self._connection: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flowgate-sqlite")
        self._closed = False

    async def run(self, work: Callable[[sqlite3.Connection], Result]) -> Result:
        loop = asyncio.get_running_loop()
        with database_errors_as_unavailable():
            return await loop.run_in_executor(self._thread, self._run, work)

    async def aclose(self) -> None:
        """Close the connection once the work under way is done; the lane is not used again."""
        if self._closed:
            return
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close)
        self._thread.shutdown(wait=False)

    def _run(self, work: Callable[[sqlite3.Connection], Result]) -> Result:
        if self._connection is None:
            self._connection = self._open()
        return work(self._connection)

    def _open(self) -> sqlite3.Connection:
        # isolation_level=None: sqlite3 opens no transaction of its own; work says where one
        # starts and ends (:func:`transaction`).
        connection = sqlite3.connect(self._path, timeout=SQLITE_BUSY_TIMEOUT, isolation_level=None)
        try:
            configure_sqlite_connection(connection, None)
        except BaseException:
            connection.close()
            raise
        return connection

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


@contextmanager
def transaction(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` if the block raises. Immediate: the
    write lock is taken (or waited for) at the start, so a transaction that reads, then
    writes, cannot fail half-way on another writer."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
    except BaseException:
        if connection.in_transaction:  # some errors (a full disk) have ended it already
            connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")
