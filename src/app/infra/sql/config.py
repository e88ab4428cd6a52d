"""The SQLAlchemy configuration of flowgate's database, and applying its migrations.

One database URL drives both worlds: ``sqlite+aiosqlite:///var/flowgate.db`` (embedded; the CLI
and the server share the file) and ``postgresql+asyncpg://...`` (production).
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

from advanced_alchemy.config import (
    AlembicAsyncConfig,
    AsyncSessionConfig,
    EngineConfig,
    SQLAlchemyAsyncConfig,
)
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

if TYPE_CHECKING:
    from advanced_alchemy.extensions import litestar as aa_litestar

# Registers the tables on advanced-alchemy's metadata, which the config and env.py use.
from app.infra.sql import models as _models  # noqa: F401

MIGRATIONS_DIR = Path(__file__).resolve().parents[4] / "migrations"
#: Seconds to wait for a connection (PostgreSQL) or for another process's write lock (SQLite).
CONNECT_TIMEOUT = 5.0
SQLITE_BUSY_TIMEOUT = 15.0
#: Enough that concurrent admissions and turns reuse connections instead of opening new ones:
#: an overflow connection is closed when it is returned, and opening one (TLS included) cost
#: more than the insert it served when 100 turns ran at once.
POOL_SIZE = 40
POOL_OVERFLOW = 10
POOL_RECYCLE = 1800


def make_sqlalchemy_config(database_url: str) -> aa_litestar.SQLAlchemyAsyncConfig:
    """The config for the Litestar plugin (the app's engine lifespan) and its repositories."""
    from advanced_alchemy.extensions import litestar

    return litestar.SQLAlchemyAsyncConfig(
        **_config_options(database_url, litestar.EngineConfig, litestar.AsyncSessionConfig)
    )


def make_plain_sqlalchemy_config(database_url: str) -> SQLAlchemyAsyncConfig:
    """The same config without Litestar's plugin parts, for the CLI (which builds no app):
    importing advanced-alchemy's Litestar extension costs a command start-up about 0.2 s."""
    return SQLAlchemyAsyncConfig(**_config_options(database_url, EngineConfig, AsyncSessionConfig))


def _config_options(
    database_url: str, engine: type[EngineConfig], session: type[AsyncSessionConfig]
) -> dict[str, Any]:
    return {
        "connection_string": database_url,
        "create_engine_callable": _create_engine,
        "engine_config": _engine_config(database_url, engine),
        # Rows are turned into Structs after commit; expiring them would force a reload.
        "session_config": session(expire_on_commit=False),
        "alembic_config": AlembicAsyncConfig(
            script_location=str(MIGRATIONS_DIR),
            # No alembic.ini: the script location above and env.py say everything.
            script_config="",
        ),
    }


async def upgrade_database(config: SQLAlchemyAsyncConfig, revision: str = "head") -> None:
    """Apply the migrations up to ``revision``, like ``app database upgrade`` does.

    Alembic's env.py runs its own event loop, so it runs in a worker thread here.
    """
    from advanced_alchemy.alembic.commands import AlembicCommands

    await asyncio.to_thread(AlembicCommands(sqlalchemy_config=config).upgrade, revision)


def _engine_config(database_url: str, engine_config: type[EngineConfig]) -> EngineConfig:
    if make_url(database_url).get_backend_name() == "sqlite":
        # sqlite3's ``timeout`` is its busy timeout: wait for the other process's write lock.
        return engine_config(connect_args={"timeout": SQLITE_BUSY_TIMEOUT})
    # No pre-ping: it cost a round trip per unit of work (a fifth of a connect's time in the
    # benchmark). A connection that died is still noticed: SQLAlchemy invalidates it on the
    # disconnect error, the call answers StoreUnavailable once, and the pool reconnects.
    return engine_config(
        pool_size=POOL_SIZE,
        max_overflow=POOL_OVERFLOW,
        pool_recycle=POOL_RECYCLE,
        pool_timeout=int(CONNECT_TIMEOUT),
        # asyncpg's connect timeout; without it a black-holed host blocks for a minute.
        connect_args={"timeout": CONNECT_TIMEOUT},
    )


def _create_engine(database_url: str, **kwargs: Any) -> AsyncEngine:
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return create_async_engine(url, **kwargs)
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, **kwargs)
    event.listen(engine.sync_engine, "connect", configure_sqlite_connection)
    return engine


def configure_sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    """Each connection to the embedded file, the engine's (its ``connect`` event) and the
    claims' lane's (:mod:`app.infra.sql.sqlite_lane`)."""
    cursor = dbapi_connection.cursor()
    # WAL lets the server read while the CLI writes (and NORMAL sync is safe under WAL);
    # SQLite enforces foreign keys, hence ON DELETE CASCADE, only when asked to. WAL is kept
    # in the file, so it is asked for only when the file is not in it yet (a new file): asking
    # again takes a lock that a second process connecting at the same moment was refused
    # with "database is locked", without the busy timeout's wait.
    cursor.execute("PRAGMA journal_mode")
    (mode,) = cursor.fetchone()
    if str(mode).lower() != "wal":
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError:
            # Locked: another connection (the engine's, the claims' lane, another process)
            # holds the file at this moment, and is switching it itself; this one goes on in
            # whatever mode the file has (SQLite keeps WAL in the file once set).
            pass
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
