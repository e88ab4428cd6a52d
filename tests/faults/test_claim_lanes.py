"""Chat claims run on connections held out of the pool (app.infra.sql.lanes): a PostgreSQL
restart kills them while idle, and the next claim must still succeed (one retry on a fresh
connection), not answer 1013 because a dead connection was kept."""

from __future__ import annotations

import asyncio
import uuid

from app.domain.chats import ChatSession
from app.infra.sql.config import make_sqlalchemy_config
from app.infra.sql.repositories import SqlChatRepository
from tests.private_stores import PrivatePostgres


async def test_a_claim_after_a_restart_succeeds_on_a_fresh_connection(
    private_postgres: PrivatePostgres,
) -> None:
    config = make_sqlalchemy_config(private_postgres.url)
    chats = SqlChatRepository(config.create_session_maker(), config.get_engine())
    try:
        before = ChatSession(uuid.uuid4().hex, "f", "alice")
        async with asyncio.timeout(10):
            assert (
                await asyncio.gather(*(chats.claim_session(before) for _ in range(4)))
                == [before] * 4
            )
        await asyncio.to_thread(private_postgres.restart, 0.5)

        after = [ChatSession(uuid.uuid4().hex, "f", "bob") for _ in range(6)]
        async with asyncio.timeout(20):
            assert await asyncio.gather(*map(chats.claim_session, after)) == after
            assert await chats.claim_session(ChatSession(before.chat_id, "f", "x")) == before
    finally:
        private_postgres.ensure_running()
        await chats.aclose()
        await config.get_engine().dispose()
