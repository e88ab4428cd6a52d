"""What one chat claim costs the server's CPU, by how it is sent (issue 10's question: the async
session against a Core statement on a pooled connection, and batching).

    python -m bench.claim_cost            # PostgreSQL on 127.0.0.1:5432 (user postgres, trust)

Creates a database of its own, migrates it, claims N new chat ids each way one after another
(no concurrency: the cost of the statement, not of waiting), prints CPU µs per claim
(``time.process_time``: this process only, the database's own work excluded) and drops the
database. Every loop is bounded by N.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.dialects import postgresql

from app.domain.chats import ChatSession
from app.infra.sql.claims import _POSTGRES_CLAIM, ChatClaims
from app.infra.sql.config import make_plain_sqlalchemy_config
from app.infra.sql.models import ChatSessionRow
from app.infra.sql.sessions import unit_of_work
from bench.servers import _pg_admin

# Named parameters for SQLAlchemy's text(); the adapter's own statement uses $1..$4.
_TEXT_CLAIM = text(
    _POSTGRES_CLAIM.replace("$1::varchar[]", "CAST(:ids AS varchar[])")
    .replace("$2::varchar[]", "CAST(:flows AS varchar[])")
    .replace("$3::varchar[]", "CAST(:users AS varchar[])")
    .replace("$4::timestamptz", "CAST(:now AS timestamptz)")
)


async def measure(url: str, n: int) -> list[tuple[str, float]]:
    config = make_plain_sqlalchemy_config(url)
    engine = config.get_engine()
    sessions = config.create_session_maker()
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    claims = ChatClaims(engine, postgres=True)
    run = uuid.uuid4().hex[:8]
    orm_insert = postgresql.insert(ChatSessionRow).on_conflict_do_nothing(
        index_elements=["chat_id"]
    )

    def ids(way: str, i: int, k: int) -> list[str]:
        return [f"{run}-{way}-{i}-{j}" for j in range(k)]

    async def session_orm(i: int, k: int) -> None:  # the first session's code
        async with unit_of_work(sessions) as db:
            for chat_id in ids("orm", i, k):
                await db.execute(
                    orm_insert.values(
                        chat_id=chat_id, flow_id="f", user_id="u", created_at=datetime.now(UTC)
                    )
                )
            await db.commit()

    async def core_text(i: int, k: int) -> None:
        async with autocommit.connect() as connection:
            (
                await connection.execute(
                    _TEXT_CLAIM,
                    {
                        "ids": ids("core", i, k),
                        "flows": ["f"] * k,
                        "users": ["u"] * k,
                        "now": datetime.now(UTC),
                    },
                )
            ).all()

    async def adapter(i: int, k: int) -> None:  # what flowgate runs (k = 1: no batch formed)
        await asyncio.gather(
            *(claims.claim(ChatSession(c, "f", "u")) for c in ids("adapter", i, k))
        )

    ways: list[tuple[str, Callable[[int, int], Awaitable[None]], int]] = [
        ("AsyncSession, ORM-built insert, one per claim", session_orm, 1),
        ("Core text on a pooled AUTOCOMMIT connection, one per claim", core_text, 1),
        (
            "flowgate's adapter (driver fetch on a lane, commit without flush), one per claim",
            adapter,
            1,
        ),
        ("flowgate's adapter, 8 concurrent claims (one statement)", adapter, 8),
        ("flowgate's adapter, 64 concurrent claims (one statement)", adapter, 64),
    ]
    results = []
    for name, way, k in ways:
        for i in range(20):  # warm-up: connections opened, statements prepared
            await way(-1 - i, k)
        rounds = max(1, n // k)
        started = time.process_time()
        for i in range(rounds):
            await way(i, k)
        results.append((name, (time.process_time() - started) / (rounds * k) * 1e6))
    await claims.aclose()
    await engine.dispose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=2000, help="claims per way")
    args = parser.parse_args()
    database = f"flowgate_claims_{uuid.uuid4().hex[:8]}"
    _pg_admin(f'CREATE DATABASE "{database}"')
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database}"
    try:
        env = os.environ | {"FLOWGATE_DATABASE_URL": url}
        subprocess.run(
            [sys.executable, "-m", "app", "database", "upgrade", "--no-prompt"],
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )
        for name, micros in asyncio.run(measure(url, args.n)):
            print(f"{micros:8.0f} µs CPU per claim  {name}")
    finally:
        _pg_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


if __name__ == "__main__":
    main()
