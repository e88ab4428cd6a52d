"""Chat claims run on connections held out of the pool (app.infra.sql.lanes): a PostgreSQL
restart kills them while idle, and the next claim must still succeed (one retry on a fresh
connection), not answer 1013 because a dead connection was kept."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

from app.domain.chats import ChatSession
from app.infra.sql.config import make_sqlalchemy_config
from app.infra.sql.repositories import SqlChatRepository
from tests.messages import question_in
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


async def test_a_claim_answered_just_before_a_crash_is_durable_after_it(
    private_postgres: PrivatePostgres,
) -> None:
    """A claim commits without waiting for the flush and is proven after
    (app.infra.sql.claims). Here the database crashes (immediate stop: no shutdown checkpoint,
    recovery at start) after the claim was answered and before its proof: the proof runs on
    the recovered server, where the row is found, or made again for its owner if the crash
    lost it. Either way the chat is the first user's afterwards, durably, and its calls work;
    nothing is stored before that."""
    # The test cluster runs without durability (tests/private_stores.py): the schema is made
    # to survive the crash by a checkpoint; the claim is left to the crash.
    await private_postgres.query("CHECKPOINT")
    config = make_sqlalchemy_config(private_postgres.url)
    chats = SqlChatRepository(config.create_session_maker(), config.get_engine())
    claims = chats._claims
    real_prove = claims._proofs._run
    crashed = asyncio.Event()

    async def prove_after_the_crash(owners: Sequence[ChatSession]) -> Sequence[bool]:
        await crashed.wait()
        return await real_prove(owners)

    claims._proofs._run = prove_after_the_crash
    try:
        chat = ChatSession(uuid.uuid4().hex, "f", "alice")
        async with asyncio.timeout(60):
            # A connection the proofs' lanes hold from before the crash, which it ends.
            await chats.ping()
            assert await chats.claim_session(chat) == chat
            durable = chats.claim_durability(chat.chat_id)
            assert durable is not None and not durable.done()
            write = asyncio.ensure_future(chats.add_message(question_in(chat)))
            await asyncio.to_thread(private_postgres.restart, 0.2, "immediate")
            assert not write.done()  # nothing stored before the proof
            crashed.set()
            assert await durable is True
            rows = await private_postgres.query(
                "SELECT user_id FROM chat_session WHERE chat_id = $1", chat.chat_id
            )
            assert [r["user_id"] for r in rows] == ["alice"]
            stored = await write
            assert [m.id for m in await chats.history(chat.chat_id, None, 5)] == [stored.id]
    finally:
        crashed.set()
        claims._proofs._run = real_prove
        private_postgres.ensure_running()
        await chats.aclose()
        await config.get_engine().dispose()
