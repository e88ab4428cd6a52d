"""Every port's contract runs against its fake and against each real adapter.

A backend name picks the adapter: ``fake`` (app.testing), ``sqlite`` and ``postgresql``
(the SQL adapters on a fresh migrated database), ``redis``. Tests that open a store twice get
two independent clients (two engines, two Redis pools), as two processes would have.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from app.infra.redis.client import AnyRedis, make_redis
from app.infra.sql.config import make_sqlalchemy_config
from app.infra.sql.repositories import SqlChatRepository
from app.infra.sql.sessions import SessionMaker

FAKE, SQLITE, POSTGRESQL, REDIS = "fake", "sqlite", "postgresql", "redis"
SQL_BACKENDS = [FAKE, SQLITE, pytest.param(POSTGRESQL, marks=pytest.mark.integration)]
BUILD_BACKENDS = [*SQL_BACKENDS, pytest.param(REDIS, marks=pytest.mark.integration)]

# Nothing listens on port 1: connecting is refused at once.
CLOSED_POSTGRESQL_URL = "postgresql+asyncpg://postgres@127.0.0.1:1/flowgate"
CLOSED_REDIS_URL = "redis://127.0.0.1:1/0"
#: No store call may take longer than this, least of all one that fails.
CALL_TIMEOUT = 10.0


class Clients:
    """Opens database session makers and Redis clients, and closes them all at the end."""

    def __init__(self) -> None:
        self._closers: list[Callable[[], Awaitable[None]]] = []

    def sql_sessions(self, database_url: str) -> SessionMaker:
        config = make_sqlalchemy_config(database_url)
        self._closers.append(config.get_engine().dispose)
        return config.create_session_maker()

    def sql_chats(self, database_url: str) -> SqlChatRepository:
        """The SQL chat repository, closed (its held connections returned) before its engine."""
        chats = SqlChatRepository(self.sql_sessions(database_url))
        self._closers.append(chats.aclose)
        return chats

    def redis(self, url: str, *, cluster: bool = False) -> AnyRedis:
        client = make_redis(url, cluster=cluster)
        self._closers.append(client.aclose)
        return client

    async def close(self) -> None:
        for close in reversed(self._closers):
            await close()
        await _join_aiosqlite_workers()


async def _join_aiosqlite_workers() -> None:
    """Wait, with the test's loop still open, for aiosqlite's worker threads to end.

    After a failed connect aiosqlite stops its worker without awaiting it; a worker that
    answers after the loop closed raises "Event loop is closed" in its thread
    (omnilib/aiosqlite#241). Harmless in a server, noise in a test run.
    """
    workers = [
        thread
        for thread in threading.enumerate()
        if thread.name.endswith("(_connection_worker_thread)")
    ]
    for worker in workers:
        await asyncio.to_thread(worker.join, CALL_TIMEOUT)


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    opened = Clients()
    yield opened
    await opened.close()


def database_url(request: pytest.FixtureRequest, backend: str) -> str:
    """The migrated database of ``backend``, created by the root conftest."""
    fixture = {SQLITE: "sqlite_database_url", POSTGRESQL: "pg_database_url"}[backend]
    url: str = request.getfixturevalue(fixture)
    return url


def unreachable_database_url(backend: str, tmp_path: Path) -> str:
    if backend == SQLITE:
        # A directory is no database file: SQLite cannot open it.
        return f"sqlite+aiosqlite:///{tmp_path}"
    return CLOSED_POSTGRESQL_URL


# The cross-process ports' fixture (``nodes``), for the lease and turn log contracts, and the
# private Redis Cluster it runs them on.
from tests.contract.shared_state import nodes, server_nodes  # noqa: E402, F401
from tests.private_stores import private_redis_cluster  # noqa: E402, F401
