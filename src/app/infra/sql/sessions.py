"""One short session per operation, and what the SQL adapters share about it.

WebSockets live for hours, so no adapter holds a session between calls: each operation opens
a unit of work, commits it or lets it roll back, and closes it.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase

from app.domain.errors import StoreUnavailable

SessionMaker = Callable[[], AsyncSession]

# OSError covers refused and reset connections and TimeoutError; OperationalError covers a
# locked or unopenable SQLite file and a PostgreSQL server that is shutting down;
# sqlalchemy's TimeoutError is a pool with no connection free in time; sqlite3's own
# OperationalError is the same as raised on the embedded lane (app.infra.sql.sqlite_lane).
_UNAVAILABLE = (
    OSError,
    sa_exc.OperationalError,
    sqlite3.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,
)


@asynccontextmanager
async def unit_of_work(sessions: SessionMaker) -> AsyncIterator[AsyncSession]:
    """A session that rolls back unless the caller commits it.

    A failure to reach the database, however the driver and advanced-alchemy wrapped it,
    leaves as :class:`StoreUnavailable`.
    """
    with database_errors_as_unavailable():
        async with sessions() as session:
            yield session


@contextmanager
def database_errors_as_unavailable() -> Iterator[None]:
    """A failure to reach the database, however the driver and SQLAlchemy wrapped it, leaves
    as :class:`StoreUnavailable`; any other error as it is."""
    try:
        yield
    except Exception as exc:
        cause = connection_failure(exc)
        if cause is None:
            raise
        raise StoreUnavailable(f"database unavailable: {type(cause).__name__}") from exc


def insert_for(
    session: AsyncSession, model: type[DeclarativeBase]
) -> sqlite.Insert | postgresql.Insert:
    """An INSERT with ``on_conflict_do_*`` for the session's dialect (SQLite or PostgreSQL)."""
    return dialect_insert(session.get_bind().dialect.name)(model)


def dialect_insert(dialect: str) -> Callable[[Any], sqlite.Insert | postgresql.Insert]:
    """The ``insert`` construct of a dialect flowgate supports, with ``on_conflict_do_*``."""
    if dialect == "sqlite":
        return sqlite.insert
    if dialect == "postgresql":
        return postgresql.insert
    raise ValueError(f"flowgate supports SQLite and PostgreSQL databases, not {dialect}")


def connection_failure(exc: BaseException) -> BaseException | None:
    """The error in ``exc``'s chain that says the database cannot be reached, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _UNAVAILABLE) or _is_asyncpg_connection_error(current):
            return current
        if isinstance(current, sa_exc.DBAPIError) and current.connection_invalidated:
            return current
        current = current.__cause__ or current.__context__
    return None


def _is_asyncpg_connection_error(exc: BaseException) -> bool:
    """asyncpg's connection errors, without importing asyncpg on SQLite: if it was never
    imported, no asyncpg error can have been raised."""
    asyncpg = sys.modules.get("asyncpg")
    return asyncpg is not None and isinstance(exc, asyncpg.PostgresConnectionError)
