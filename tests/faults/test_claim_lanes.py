"""Chat claims run on connections held out of the pool (app.infra.sql.lanes): a PostgreSQL
restart kills them while idle, and the next claim must still succeed (one retry on a fresh
connection), not answer 1013 because a dead connection was kept."""

from __future__ import annotations

import asyncio
import uuid

from app.domain.chats import Category, ChatSession, NewMessage
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


async def test_a_claim_answered_just_before_a_crash_is_durable_after_it(
    private_postgres: PrivatePostgres,
) -> None:
    """A claim commits without waiting for the flush (app.infra.sql.claim_fence). Here the
    database crashes (immediate stop: no shutdown checkpoint, recovery at start) right after
    the claim was answered and before the fence saw its flush: the fence's connection dies
    with it, so the claim is made again for its owner on the recovered server. Whether or not
    the crash lost the row, the chat is the first user's afterwards, durably, and its calls
    work; nothing is stored before that."""
    # The test cluster runs without durability (tests/private_stores.py): the schema is made
    # to survive the crash by a checkpoint; the claim is left to the crash.
    await private_postgres.query("CHECKPOINT")
    config = make_sqlalchemy_config(private_postgres.url)
    chats = SqlChatRepository(config.create_session_maker(), config.get_engine())
    fence = chats._claims._fence
    assert fence is not None
    real_watch = fence.watch
    watched: list[int] = []

    def watch_after_a_crash(generation: int) -> asyncio.Future[bool]:
        proven: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        async def crash_then_watch() -> None:
            if not watched:  # the first claim only
                await asyncio.to_thread(private_postgres.restart, 0.2, "immediate")
            watched.append(generation)
            proven.set_result(await real_watch(generation))

        tasks.append(asyncio.create_task(crash_then_watch()))
        return proven

    tasks: list[asyncio.Task[None]] = []
    fence.watch = watch_after_a_crash  # type: ignore[method-assign]
    try:
        chat = ChatSession(uuid.uuid4().hex, "f", "alice")
        async with asyncio.timeout(60):
            assert await chats.claim_session(chat) == chat
            durable = chats.claim_durability(chat.chat_id)
            assert durable is not None and await durable is True
            # The first watch was on the connection the crash ended; the proof came from a
            # later one, after the claim was made again.
            assert len(watched) == 2 and watched[1] > watched[0]
            rows = await private_postgres.query(
                "SELECT user_id FROM chat_session WHERE chat_id = $1", chat.chat_id
            )
            assert [r["user_id"] for r in rows] == ["alice"]
            stored = await chats.add_message(
                NewMessage(
                    chat_id=chat.chat_id,
                    flow_id="f",
                    user_id="alice",
                    is_bot=False,
                    category=Category.QUESTION,
                    message="hi",
                    turn_id=uuid.uuid4().hex,
                )
            )
            assert [m.id for m in await chats.history(chat.chat_id, None, 5)] == [stored.id]
    finally:
        fence.watch = real_watch  # type: ignore[method-assign]
        await asyncio.gather(*tasks, return_exceptions=True)
        private_postgres.ensure_running()
        await chats.aclose()
        await config.get_engine().dispose()
