"""Claims commit without waiting for the WAL's flush, and nothing trusts them beyond the
database until a transaction that commits with the flush has found them (app.infra.sql.claims),
on the real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.domain.chats import ChatSession
from app.domain.errors import StoreUnavailable
from app.infra.sql import claims as claims_module
from app.infra.sql.config import make_sqlalchemy_config
from app.infra.sql.lanes import DriverLanes
from app.infra.sql.repositories import SqlChatRepository
from tests.messages import question_in

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


@pytest.fixture
async def probe(fresh_pg_database_url: str) -> AsyncIterator[Any]:
    """A plain connection of the test's own, beside the repository's."""
    connection = await asyncpg.connect(
        fresh_pg_database_url.replace("postgresql+asyncpg", "postgresql")
    )
    yield connection
    await connection.close()


@contextmanager
def proofs_held(chats: SqlChatRepository) -> Iterator[asyncio.Event]:
    """The claims' proofs wait until the event is set (the test does something first)."""
    claims = chats._claims
    gate, real = asyncio.Event(), claims._proofs._run

    async def held(owners: Sequence[ChatSession]) -> Sequence[bool]:
        await gate.wait()
        return await real(owners)

    claims._proofs._run = held
    try:
        yield gate
    finally:
        gate.set()
        claims._proofs._run = real


async def _setting(driver: Any) -> str:
    return str(await driver.fetchval("SELECT current_setting('synchronous_commit')"))


async def _wal(probe: Any, position: str) -> int:
    return int(await probe.fetchval(f"SELECT (pg_current_wal_{position}_lsn() - '0/0')::bigint"))


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


async def test_a_claim_is_answered_at_once_and_proven_soon(chats: SqlChatRepository) -> None:
    chat = ChatSession(uuid.uuid4().hex, "f", "alice")
    async with asyncio.timeout(20):
        assert await chats.claim_session(chat) == chat
        pending = chats.claim_durability(chat.chat_id)
        assert pending is not None  # answered before the proof
        assert await pending is True
        assert chats.claim_durability(chat.chat_id) is None
        # Another's claim of a taken id is answered with the owner, and proven too.
        assert await chats.claim_session(ChatSession(chat.chat_id, "f", "bob")) == chat
        assert await chats.add_message(question_in(chat))  # waits for it, then stores
        assert chats.claim_durability(chat.chat_id) is None


async def test_the_proof_flushes_the_claim(chats: SqlChatRepository, probe: Any) -> None:
    """Proven means on disk: by the time the proof answers, the WAL is flushed past the
    claim's commit (a proof that only read the row would not wait for that)."""
    for _ in range(5):
        chat = ChatSession(uuid.uuid4().hex, "f", "alice")
        with proofs_held(chats) as gate:
            async with asyncio.timeout(20):
                assert await chats.claim_session(chat) == chat
                committed = await _wal(probe, "insert")  # at or past the claim's commit
                gate.set()
                pending = chats.claim_durability(chat.chat_id)
                assert pending is not None and await pending is True
        assert await _wal(probe, "flush") >= committed


async def test_concurrent_claims_are_proven_together(chats: SqlChatRepository) -> None:
    many = [ChatSession(uuid.uuid4().hex, "f", "bob") for _ in range(30)]
    with proofs_held(chats) as gate:
        async with asyncio.timeout(20):
            assert await asyncio.gather(*map(chats.claim_session, many)) == many
            writes = [asyncio.ensure_future(chats.add_message(question_in(c))) for c in many]
            await asyncio.sleep(0.05)
            assert not any(w.done() for w in writes)  # they wait for the proofs
            gate.set()
            await asyncio.gather(*writes)
    assert all(chats.claim_durability(c.chat_id) is None for c in many)
    # One statement for all thirty, on one connection (not one each, out of the pool's fifty).
    assert chats._lanes is not None and len(chats._lanes._idle) <= 2


async def test_proofs_wait_for_company_unless_a_call_waits_for_one(
    chats: SqlChatRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim's proof lingers (to go with others); a first message sent right after the
    connect does not wait out that linger."""
    monkeypatch.setattr(claims_module, "PROOF_LINGER", 60.0)
    idle, asking = (ChatSession(uuid.uuid4().hex, "f", u) for u in ("alice", "bob"))
    async with asyncio.timeout(20):
        assert await asyncio.gather(*map(chats.claim_session, (idle, asking))) == [idle, asking]
        await asyncio.sleep(0.3)
        waiting = chats.claim_durability(idle.chat_id)
        assert waiting is not None and not waiting.done()  # lingering
        async with asyncio.timeout(5):  # not the linger's sixty seconds
            assert await chats.add_message(question_in(asking))
        assert chats.claim_durability(asking.chat_id) is None
        # The lingering proof went with it.
        assert await asyncio.wait_for(asyncio.shield(waiting), 1) is True


async def test_a_proof_holds_for_the_owner_it_found_only(chats: SqlChatRepository) -> None:
    """Two proofs of one id in a batch, for different owners (one answered before a crash
    lost the row and another user claimed the id): only the row's owner is proven."""
    chat = ChatSession(uuid.uuid4().hex, "f", "alice")
    async with asyncio.timeout(20):
        assert await chats.claim_session(chat) == chat
        other = ChatSession(chat.chat_id, "f", "bob")
        assert await chats._claims._prove([other, chat, other]) == [False, True, False]


async def test_a_claim_the_database_lost_is_made_again(
    chats: SqlChatRepository, probe: Any
) -> None:
    """The row is gone by the time of the proof (a crash of the database lost it): the claim
    is made again for the owner it answered, with the flush, and is durable."""
    chat = ChatSession(uuid.uuid4().hex, "f", "alice")
    with proofs_held(chats) as gate:
        async with asyncio.timeout(20):
            assert await chats.claim_session(chat) == chat
            await probe.execute("DELETE FROM chat_session WHERE chat_id = $1", chat.chat_id)
            gate.set()
            pending = chats.claim_durability(chat.chat_id)
            assert pending is not None and await pending is True
    rows = await probe.fetch("SELECT user_id FROM chat_session WHERE chat_id = $1", chat.chat_id)
    assert [r["user_id"] for r in rows] == ["alice"]
    assert await chats.add_message(question_in(chat))


async def test_a_claim_lost_to_another_owner_fails_the_chats_calls(
    chats: SqlChatRepository, probe: Any
) -> None:
    """As above, but by the time of the proof the id is another user's (the row was lost and
    someone claimed the id): the claim is lost, and nothing is read from or stored in that
    chat here."""
    chat = ChatSession(uuid.uuid4().hex, "f", "alice")
    with proofs_held(chats) as gate:
        async with asyncio.timeout(20):
            assert await chats.claim_session(chat) == chat
            await probe.execute(
                "UPDATE chat_session SET user_id = 'mallory' WHERE chat_id = $1", chat.chat_id
            )
            gate.set()
            pending = chats.claim_durability(chat.chat_id)
            assert pending is not None and await pending is False
    async with asyncio.timeout(20):
        with pytest.raises(StoreUnavailable):
            await chats.add_message(question_in(chat))
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


@pytest.mark.parametrize("failures", [1, 3])
async def test_a_proof_that_failed_is_tried_again_before_the_claim_is_lost(
    chats: SqlChatRepository, monkeypatch: pytest.MonkeyPatch, failures: int
) -> None:
    """The database away during the proof: tried again ``PROOF_RETRIES`` times; lost only
    when every try failed."""
    monkeypatch.setattr(claims_module, "PROOF_RETRY_AFTER", 0.05)
    lanes = chats._lanes
    assert lanes is not None
    real_run, tries = lanes.run, 0

    async def failing(statement: Any) -> Any:
        nonlocal tries
        tries += 1
        if tries <= failures:
            raise StoreUnavailable("database unreachable")
        return await real_run(statement)

    monkeypatch.setattr(lanes, "run", failing)
    chat = ChatSession(uuid.uuid4().hex, "f", "alice")
    async with asyncio.timeout(20):
        assert await chats.claim_session(chat) == chat
        pending = chats.claim_durability(chat.chat_id)
        assert pending is not None
        assert await pending is (failures <= claims_module.PROOF_RETRIES)
    assert tries == min(failures + 1, claims_module.PROOF_RETRIES + 1)
