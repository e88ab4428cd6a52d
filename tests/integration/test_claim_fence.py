"""Claims commit without waiting for the WAL's flush, and nothing trusts them beyond the
database until the flush is seen (app.infra.sql.claim_fence), on the real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.domain.chats import Category, ChatSession, NewMessage
from app.domain.errors import StoreUnavailable
from app.infra.sql.claim_fence import _POSITIONS, ClaimFence
from app.infra.sql.config import make_sqlalchemy_config
from app.infra.sql.lanes import DriverLanes
from app.infra.sql.repositories import SqlChatRepository

pytestmark = pytest.mark.integration


@pytest.fixture
async def engine(fresh_pg_database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_sqlalchemy_config(fresh_pg_database_url).get_engine()
    yield engine
    await engine.dispose()


@pytest.fixture
async def chats(engine: AsyncEngine) -> AsyncIterator[SqlChatRepository]:
    config = make_sqlalchemy_config(str(engine.url.render_as_string(hide_password=False)))
    repository = SqlChatRepository(config.create_session_maker(), engine)
    yield repository
    await repository.aclose()


def question(chat: ChatSession) -> NewMessage:
    return NewMessage(
        chat_id=chat.chat_id,
        flow_id=chat.flow_id,
        user_id=chat.user_id,
        is_bot=False,
        category=Category.QUESTION,
        message="hello",
        turn_id=uuid.uuid4().hex,
    )


async def _setting(driver: Any) -> str:
    return str(await driver.fetchval("SELECT current_setting('synchronous_commit')"))


async def test_only_the_claims_lanes_commit_without_the_flush(engine: AsyncEngine) -> None:
    claims, others = DriverLanes(engine, commit_without_flush=True), DriverLanes(engine)
    try:
        async with asyncio.timeout(20):
            assert await claims.run(_setting) == "off"
            assert await others.run(_setting) == "on"
            await claims.aclose()
            async with engine.connect() as connection:  # the pool gets it back as it was
                raw = await connection.get_raw_connection()
                assert await _setting(raw.driver_connection) == "on"
    finally:
        await claims.aclose()
        await others.aclose()


async def test_a_claim_is_answered_at_once_and_seen_durable_soon(
    chats: SqlChatRepository,
) -> None:
    chat = ChatSession(uuid.uuid4().hex, "f", "alice")
    async with asyncio.timeout(20):
        assert await chats.claim_session(chat) == chat
        pending = chats.claim_durability(chat.chat_id)
        assert pending is not None  # answered before the flush was seen
        assert await pending is True
        assert chats.claim_durability(chat.chat_id) is None
        # Another's claim of a taken id is answered with the owner, and watched too.
        assert await chats.claim_session(ChatSession(chat.chat_id, "f", "bob")) == chat
        assert await chats.add_message(question(chat))  # waits for it, then stores
        assert chats.claim_durability(chat.chat_id) is None


async def test_a_write_waiting_for_a_claims_flush_proves_it_at_once(
    chats: SqlChatRepository, engine: AsyncEngine
) -> None:
    """A first message sent right after the connect does not wait for the WAL writer: the
    write touches the claim's row in a committing transaction, which flushes the claim. Where
    the row is not the owner's any more, it waits for the fence as before."""
    fence = chats._claims._fence
    assert fence is not None
    silent: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    real_watch = fence.watch
    fence.watch = lambda generation: silent  # type: ignore[method-assign,assignment]
    try:
        chat = ChatSession(uuid.uuid4().hex, "f", "alice")
        async with asyncio.timeout(10):
            assert await chats.claim_session(chat) == chat
            assert chats.claim_durability(chat.chat_id) is not None
            stored = await chats.add_message(question(chat))
        assert chats.claim_durability(chat.chat_id) is None
        assert [m.id for m in await chats.history(chat.chat_id, None, 5)] == [stored.id]

        # Thirty first messages at once: their proofs are batched, on one or two connections
        # (not one each, out of the pool's fifty).
        many = [ChatSession(uuid.uuid4().hex, "f", "bob") for _ in range(30)]
        async with asyncio.timeout(10):
            assert await asyncio.gather(*map(chats.claim_session, many)) == many
            await asyncio.gather(*(chats.add_message(question(c)) for c in many))
        assert all(chats.claim_durability(c.chat_id) is None for c in many)
        assert chats._lanes is not None and len(chats._lanes._idle) <= 2

        taken = ChatSession(uuid.uuid4().hex, "f", "alice")
        assert await chats.claim_session(taken) == taken
        async with engine.connect() as connection:
            raw = await connection.get_raw_connection()
            await raw.driver_connection.execute(
                "UPDATE chat_session SET user_id = 'mallory' WHERE chat_id = $1", taken.chat_id
            )
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await chats.add_message(question(taken))
        assert chats.claim_durability(taken.chat_id) is not None  # still the fence's to say
    finally:
        fence.watch = real_watch  # type: ignore[method-assign]
        silent.set_result(True)


async def _terminate(engine: AsyncEngine, pid: int) -> None:
    """End a backend as a restart would, and wait (up to 5 s) until it has exited."""
    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        assert await raw.driver_connection.fetchval("SELECT pg_terminate_backend($1, 5000)", pid)


async def test_claims_watched_by_a_connection_that_died_are_lost(engine: AsyncEngine) -> None:
    """A restart ends every connection: if the fence's connection dies between a claim's
    commit and its flush, the claim may be gone, and is reported lost."""
    fence = ClaimFence(engine, poll_interval=0.01)
    try:
        async with asyncio.timeout(20):
            generation = await fence.open()
            await _terminate(engine, fence._driver.get_server_pid())
            assert await fence.watch(generation) is False
            # A fresh connection watches the next claims.
            assert await fence.watch(await fence.open()) is True
    finally:
        await fence.aclose()


async def test_a_claim_the_fence_could_not_prove_is_claimed_again(
    chats: SqlChatRepository, engine: AsyncEngine
) -> None:
    """The fence's connection dies after the claim was sent (as in a restart of the database):
    the claim is made again for the owner it named, and is durable if that owner still has it,
    as here (the row survived)."""
    fence = chats._claims._fence
    assert fence is not None
    chat = ChatSession(uuid.uuid4().hex, "f", "alice")
    async with asyncio.timeout(20):
        await fence.open()
        generation = fence._generation
        await _terminate(engine, fence._driver.get_server_pid())  # not yet seen by asyncpg
        assert await chats.claim_session(chat) == chat
        pending = chats.claim_durability(chat.chat_id)
        assert pending is not None and await pending is True
        assert fence._generation > generation  # it was watched on the dead connection
        assert chats.claim_durability(chat.chat_id) is None
        assert await chats.add_message(question(chat))


async def test_a_claim_lost_to_another_owner_fails_the_chats_calls(
    chats: SqlChatRepository, engine: AsyncEngine
) -> None:
    """As above, but by the time the claim is made again the id is another user's (the row
    was lost in the restart and someone claimed the id): the claim is lost, and nothing is
    read from or stored in that chat here."""
    fence = chats._claims._fence
    assert fence is not None
    chat = ChatSession(uuid.uuid4().hex, "f", "alice")
    real_open = fence.open
    opened = 0

    async def open_fence() -> int:
        nonlocal opened
        opened += 1
        if opened == 2:  # the claim made again: meanwhile the id has become mallory's
            async with engine.connect() as connection:
                raw = await connection.get_raw_connection()
                await raw.driver_connection.execute(
                    "UPDATE chat_session SET user_id = 'mallory' WHERE chat_id = $1", chat.chat_id
                )
        generation = await real_open()
        if opened == 1:  # the connection dies after the claim is sent on its watch
            await _terminate(engine, fence._driver.get_server_pid())
        return generation

    async with asyncio.timeout(20):
        fence.open = open_fence  # type: ignore[method-assign]
        try:
            assert await chats.claim_session(chat) == chat
            pending = chats.claim_durability(chat.chat_id)
            assert pending is not None and await pending is False
        finally:
            fence.open = real_open  # type: ignore[method-assign]
        assert opened == 2
        with pytest.raises(StoreUnavailable):
            await chats.add_message(question(chat))
        with pytest.raises(StoreUnavailable):
            await chats.history(chat.chat_id, None, 10)
        with pytest.raises(StoreUnavailable):
            await chats.after(chat.chat_id, 0, 10)
        assert await chats.history(uuid.uuid4().hex, None, 10) == []  # other chats unaffected

        # A later admission's claim answers the owner the database has now.
        mallory = ChatSession(chat.chat_id, "f", "mallory")
        assert await chats.claim_session(chat) == mallory
        pending = chats.claim_durability(chat.chat_id)
        assert pending is None or await pending is True
        assert await chats.history(chat.chat_id, None, 10) == []


async def test_the_flush_is_what_is_waited_for(
    engine: AsyncEngine, fresh_pg_database_url: str
) -> None:
    """The fence answers only once the flush position has passed the claims' commit: a claim
    watched right after its commit is not confirmed by a reading taken before it."""
    dsn = fresh_pg_database_url.replace("postgresql+asyncpg", "postgresql")
    lanes = DriverLanes(engine, commit_without_flush=True)
    fence = ClaimFence(engine, poll_interval=0.01)
    probe = await asyncpg.connect(dsn)
    try:
        async with asyncio.timeout(20):
            generation = await fence.open()
            await lanes.run(
                lambda d: d.execute(
                    "INSERT INTO chat_session (chat_id, flow_id, user_id, created_at)"
                    " VALUES ($1, 'f', 'u', $2)",
                    uuid.uuid4().hex,
                    datetime.now(UTC),
                )
            )
            committed_at, _ = await probe.fetchrow(_POSITIONS)  # where the commit's record ends
            assert await fence.watch(generation) is True
            flushed = await probe.fetchval(
                "SELECT (pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::bigint"
            )
            assert flushed >= committed_at
    finally:
        await probe.close()
        await fence.aclose()
        await lanes.aclose()


@pytest.mark.parametrize(
    ("insert_position", "record_end"),
    [
        ("0/1234", 0x1234),  # mid-page: the next record starts where the last one ended
        ("0/2018", 0x2000),  # past a page's header (24 bytes): the last one ended the page
        ("0/1000028", 0x1000000),  # past a segment's first page's header (40 bytes)
        ("0/1002018", 0x1002000),
    ],
)
async def test_the_end_of_the_last_record_leaves_out_a_page_header(
    engine: AsyncEngine, insert_position: str, record_end: int
) -> None:
    statement = _POSITIONS.replace("pg_current_wal_insert_lsn()", f"'{insert_position}'::pg_lsn")
    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        end, _ = await raw.driver_connection.fetchrow(statement)
    assert end == record_end
