"""Real backends for the tests that need them: a fresh, migrated database per use, and a
private Redis key prefix.

PostgreSQL (127.0.0.1:5432, user ``postgres``, trust auth) and Redis (127.0.0.1:6379) are the
machine's own. When one is down, its tests are skipped, or fail if ``CI`` is set: in CI a
skipped integration test would be a silent hole.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import asyncpg  # type: ignore[import-untyped]
import pytest
import redis

from app.infra.sql.config import make_sqlalchemy_config, upgrade_database

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"
CONNECT_TIMEOUT = 3.0


def unreachable(service: str, error: BaseException) -> NoReturn:
    message = f"{service} is not reachable: {type(error).__name__}: {error}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def migrate(database_url: str) -> None:
    asyncio.run(upgrade_database(make_sqlalchemy_config(database_url)))


@pytest.fixture
def sqlite_database_url(tmp_path: Path) -> str:
    """A migrated SQLite database file of this test's own."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'flowgate.db'}"
    migrate(url)
    return url


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """A migrated PostgreSQL database of this test session's own, dropped at the end."""
    with _pg_database() as url:
        yield url


@pytest.fixture
def fresh_pg_database_url() -> Iterator[str]:
    """A migrated PostgreSQL database of this test's own (empty, never analysed)."""
    with _pg_database() as url:
        yield url


@contextlib.contextmanager
def _pg_database() -> Iterator[str]:
    name = f"flowgate_test_{uuid.uuid4().hex}"
    try:
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as error:
        unreachable(f"PostgreSQL on {PG_HOST}:{PG_PORT}", error)
    url = f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    try:
        migrate(url)
        yield url
    finally:
        asyncio.run(
            _admin(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = '{name}' AND pid <> pg_backend_pid()",
                f'DROP DATABASE IF EXISTS "{name}"',
            )
        )


async def _admin(*statements: str) -> None:
    connection = await asyncpg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres", timeout=CONNECT_TIMEOUT
    )
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def redis_url() -> str:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=CONNECT_TIMEOUT)
    try:
        client.ping()
    except (redis.ConnectionError, redis.TimeoutError) as error:
        unreachable(f"Redis at {REDIS_URL}", error)
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """``flowgate-test:<hex>:``; every key under it is deleted after the test."""
    prefix = f"flowgate-test:{uuid.uuid4().hex}:"
    yield prefix
    delete_prefix(redis_url, prefix)


def delete_prefix(redis_url: str, prefix: str) -> None:
    """Delete every key under ``prefix`` (a test's own keys)."""
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=CONNECT_TIMEOUT)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
