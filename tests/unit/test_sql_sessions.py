"""A unit of work turns a driver's connection failure into StoreUnavailable, asyncpg's too,
although asyncpg is imported only when PostgreSQL is used."""

from __future__ import annotations

from typing import Any

import pytest

from app.domain.errors import StoreUnavailable
from app.infra.sql.sessions import unit_of_work


class _Failing:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    async def __aenter__(self) -> Any:
        raise self.error

    async def __aexit__(self, *exc: object) -> None:
        return None


async def test_an_asyncpg_connection_error_is_store_unavailable() -> None:
    import asyncpg  # type: ignore[import-untyped]

    wrapped = RuntimeError("pool")
    wrapped.__cause__ = asyncpg.ConnectionDoesNotExistError("connection was closed")
    with pytest.raises(StoreUnavailable, match="ConnectionDoesNotExistError"):
        async with unit_of_work(lambda: _Failing(wrapped)):  # type: ignore[arg-type,return-value]
            pass


async def test_other_errors_pass_through() -> None:
    with pytest.raises(KeyError):
        async with unit_of_work(lambda: _Failing(KeyError("x"))):  # type: ignore[arg-type,return-value]
            pass
