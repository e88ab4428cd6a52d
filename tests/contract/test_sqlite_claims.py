"""The embedded database's claims, run on a lane of their own (``app.infra.sql.sqlite_lane``):
what they store reads back through SQLAlchemy, another writer is waited for and then answered
as unavailable, and the lane's thread is gone once the repository is closed."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from app.domain.chats import ChatSession
from app.domain.errors import StoreUnavailable
from app.infra.sql import sqlite_lane
from app.infra.sql.models import ChatSessionRow
from tests.contract.conftest import CALL_TIMEOUT, Clients


def new_session(user: str = "u1") -> ChatSession:
    return ChatSession(chat_id=uuid.uuid4().hex, flow_id="f1", user_id=user)


def file_of(url: str) -> str:
    return url.removeprefix("sqlite+aiosqlite:///")


def lane_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("flowgate-sqlite")]


async def test_a_claimed_chat_reads_back_through_sqlalchemy(
    clients: Clients, sqlite_database_url: str
) -> None:
    chats = clients.sql_chats(sqlite_database_url)
    mine = new_session()
    before = datetime.now(UTC)
    async with asyncio.timeout(CALL_TIMEOUT):
        assert await chats.claim_session(mine) == mine
        assert await chats.get_session(mine.chat_id) == mine
    # The row's time as SQLAlchemy's column type reads it (the lane wrote it, not SQLAlchemy).
    async with clients.sql_sessions(sqlite_database_url)() as session:
        row = (
            await session.execute(
                select(ChatSessionRow).where(ChatSessionRow.chat_id == mine.chat_id)
            )
        ).scalar_one()
    assert row.created_at.tzinfo is not None
    assert before - timedelta(seconds=1) <= row.created_at <= datetime.now(UTC)


async def test_a_claim_waits_for_another_writer_then_is_unavailable_and_recovers(
    clients: Clients, sqlite_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_lane, "SQLITE_BUSY_TIMEOUT", 0.2)
    chats = clients.sql_chats(sqlite_database_url)
    # As in the server, the engine has connected before (it put the file in WAL mode).
    assert await chats.get_session("none") is None
    # Another process (the CLI, say) holds the write lock.
    writer = sqlite3.connect(file_of(sqlite_database_url), isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        waited = asyncio.get_running_loop().time()
        with pytest.raises(StoreUnavailable, match="database unavailable"):
            async with asyncio.timeout(CALL_TIMEOUT):
                await chats.claim_session(new_session())
        assert asyncio.get_running_loop().time() - waited >= 0.2
        writer.execute("ROLLBACK")
    finally:
        writer.close()
    # The lock is gone: the lane's connection serves the next claim (nothing half-done).
    again = new_session()
    async with asyncio.timeout(CALL_TIMEOUT):
        assert await chats.claim_session(again) == again
        other = ChatSession(chat_id=again.chat_id, flow_id="f1", user_id="u2")
        assert await chats.claim_session(other) == again


async def test_closing_the_repository_ends_the_lanes_thread(
    clients: Clients, sqlite_database_url: str
) -> None:
    before = set(lane_threads())
    chats = clients.sql_chats(sqlite_database_url)
    async with asyncio.timeout(CALL_TIMEOUT):
        await chats.claim_session(new_session())
    mine = [t for t in lane_threads() if t not in before]
    assert len(mine) == 1
    await chats.aclose()
    await asyncio.to_thread(mine[0].join, CALL_TIMEOUT)
    assert not mine[0].is_alive()
