"""The statements on driver lanes (app.infra.sql.lanes) keep to their indexes on PostgreSQL
whatever the table's size when they were first planned.

asyncpg prepares a lane's statement once and PostgreSQL keeps a generic plan for it. On a
fresh database (an empty ``chat_session``, never analysed) that plan was a sequential scan
joined by hash, kept while the table grew: a claim cost linearly more with every chat until
autovacuum happened to analyse the table (the benchmark's connects slowed a third from one
repeat to the next). These tests read the plan a lane would keep, and check that the lane's
planner setting does not leak into the pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.domain.chats import ChatSession
from app.infra.sql.claims import _POSTGRES_CLAIM, _POSTGRES_OWNERS, _POSTGRES_PROOF, ChatClaims
from app.infra.sql.config import make_sqlalchemy_config
from app.infra.sql.lanes import DriverLanes

_PROBE = "flowgate_claim_probe"


async def _generic_plan(driver: Any, statement: str, types: str, arguments: str) -> str:
    """The plan PostgreSQL keeps for ``statement`` on this session, as EXPLAIN says."""
    await driver.execute("SET plan_cache_mode = force_generic_plan")
    await driver.execute(f"PREPARE {_PROBE}({types}) AS {statement}")
    try:
        rows = await driver.fetch(f"EXPLAIN EXECUTE {_PROBE}({arguments})")
    finally:
        await driver.execute(f"DEALLOCATE {_PROBE}")
        await driver.execute("RESET plan_cache_mode")
    return "\n".join(row[0] for row in rows)


@pytest.fixture
async def engine(fresh_pg_database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_sqlalchemy_config(fresh_pg_database_url).get_engine()
    yield engine
    await engine.dispose()


async def test_a_claim_on_a_fresh_database_is_planned_as_index_lookups(
    engine: AsyncEngine,
) -> None:
    lanes = DriverLanes(engine)
    claims = ChatClaims(engine, postgres=True, flushing=lanes)
    try:
        async with asyncio.timeout(20):
            # A few chats, as a new deployment's first connects make them.
            for n in range(6):
                session = ChatSession(f"c{n}", "f", "alice")
                assert await claims.claim(session) == session
            # A taken id is read back by the owners' statement (a reconnect nobody remembered).
            assert await claims.claim(ChatSession("c0", "f", "bob")) == ChatSession(
                "c0", "f", "alice"
            )
            claim = await lanes.run(
                lambda driver: _generic_plan(
                    driver,
                    _POSTGRES_CLAIM,
                    "varchar[], varchar[], varchar[], timestamptz",
                    "ARRAY['x'], ARRAY['f'], ARRAY['u'], now()",
                )
            )
            owners = await lanes.run(
                lambda driver: _generic_plan(driver, _POSTGRES_OWNERS, "varchar[]", "ARRAY['x']")
            )
            proof = await lanes.run(
                lambda driver: _generic_plan(
                    driver,
                    _POSTGRES_PROOF,
                    "varchar[], varchar[], varchar[]",
                    "ARRAY['x'], ARRAY['f'], ARRAY['u']",
                )
            )
        assert "Conflict Arbiter Indexes: pk_chat_session" in claim, claim
        assert "Scan on chat_session" not in claim, claim
        # An index scan or a bitmap scan of the key's index (both look the ids up).
        assert "on pk_chat_session" in owners or "using pk_chat_session" in owners, owners
        assert "Index Cond" in owners, owners
        assert "Seq Scan on chat_session" not in owners, owners
        # The proof looks each claim's row up by its key too.
        assert "pk_chat_session" in proof, proof
        assert "Seq Scan on chat_session" not in proof, proof
    finally:
        await claims.aclose()
        await lanes.aclose()


async def test_the_lane_setting_is_reset_before_the_pool_gets_the_connection(
    engine: AsyncEngine,
) -> None:
    lanes = DriverLanes(engine)
    try:
        async with asyncio.timeout(20):
            backend, on_lane = await lanes.run(
                lambda driver: driver.fetchrow(
                    "SELECT pg_backend_pid(), current_setting('enable_seqscan')"
                )
            )
            assert on_lane == "off"
            await lanes.aclose()
            # The pool's next checkout is the same connection (the only one it has opened).
            async with engine.connect() as connection:
                raw = await connection.get_raw_connection()
                again, after = await raw.driver_connection.fetchrow(
                    "SELECT pg_backend_pid(), current_setting('enable_seqscan')"
                )
        assert again == backend and after == "on"
    finally:
        await lanes.aclose()
