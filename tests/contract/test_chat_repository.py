"""The ChatRepository contract: the fake and the SQL adapter on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from polyfactory import Use
from polyfactory.factories.msgspec_factory import MsgspecFactory

from app.domain.chats import Category, ChatMessage, ChatSession, MessageStatus, NewMessage
from app.domain.errors import StoreUnavailable
from app.domain.ports import ChatRepository
from app.infra.sql.repositories import SqlChatRepository
from app.testing import FakeChatRepository
from tests.contract.conftest import (
    CALL_TIMEOUT,
    FAKE,
    SQL_BACKENDS,
    Clients,
    database_url,
    unreachable_database_url,
)

OpenChats = Callable[[], ChatRepository]


def new_id() -> str:
    return uuid.uuid4().hex


class NewMessageFactory(MsgspecFactory[NewMessage]):
    chat_id = Use(new_id)
    flow_id = Use(new_id)
    user_id = Use(new_id)
    turn_id = Use(new_id)
    client_msg_id = None


@pytest.fixture(params=SQL_BACKENDS)
def open_chats(request: pytest.FixtureRequest, clients: Clients) -> OpenChats:
    """Opens the same chat store again, on a client of its own (a fake is shared as is)."""
    if request.param == FAKE:
        fake = FakeChatRepository()
        return lambda: fake
    url = database_url(request, request.param)
    return lambda: clients.sql_chats(url)


@pytest.fixture
def chats(open_chats: OpenChats) -> ChatRepository:
    return open_chats()


@pytest.fixture(params=SQL_BACKENDS)
def unreachable_chats(
    request: pytest.FixtureRequest, clients: Clients, tmp_path: Path
) -> ChatRepository:
    if request.param == FAKE:
        fake = FakeChatRepository()
        fake.down = True
        return fake
    url = unreachable_database_url(request.param, tmp_path)
    return clients.sql_chats(url)


async def add_messages(chats: ChatRepository, chat_id: str, count: int) -> list[int]:
    return [
        (await chats.add_message(NewMessageFactory.build(chat_id=chat_id))).id for _ in range(count)
    ]


async def test_claiming_a_new_chat_stores_it(chats: ChatRepository) -> None:
    session = ChatSession(chat_id=new_id(), flow_id=new_id(), user_id="alice")

    assert await chats.get_session(session.chat_id) is None
    assert await chats.claim_session(session) == session
    assert await chats.get_session(session.chat_id) == session


async def test_a_second_claim_gets_the_first_owner(chats: ChatRepository) -> None:
    chat_id, flow_id = new_id(), new_id()
    first = ChatSession(chat_id=chat_id, flow_id=flow_id, user_id="alice")
    await chats.claim_session(first)

    assert await chats.claim_session(ChatSession(chat_id, new_id(), "mallory")) == first
    assert await chats.get_session(chat_id) == first


async def test_concurrent_claims_from_two_processes_have_one_winner(
    open_chats: OpenChats,
) -> None:
    processes = [open_chats(), open_chats()]
    chat_id, flow_id = new_id(), new_id()
    claims = [ChatSession(chat_id, flow_id, f"user-{n}") for n in range(10)]

    async with asyncio.timeout(CALL_TIMEOUT):
        results = await asyncio.gather(
            *(processes[n % 2].claim_session(claim) for n, claim in enumerate(claims))
        )

    assert len(set(results)) == 1
    assert results[0] in claims
    assert await processes[0].get_session(chat_id) == results[0]


async def test_a_burst_of_claims_new_known_and_repeated_gets_each_its_owner(
    open_chats: OpenChats,
) -> None:
    """What a reconnect storm asks at once (the SQL adapter joins it into few statements):
    new ids, ids owned by someone else, and one new id asked by two users."""
    first, second = open_chats(), open_chats()
    flow_id = new_id()
    known = [ChatSession(new_id(), flow_id, f"owner-{n}") for n in range(20)]
    for session in known:
        await first.claim_session(session)
    fresh = [ChatSession(new_id(), flow_id, f"new-{n}") for n in range(60)]
    contested_id = new_id()
    contested = [
        ChatSession(contested_id, flow_id, "alice"),
        ChatSession(contested_id, flow_id, "bob"),
    ]
    intruders = [ChatSession(s.chat_id, flow_id, "mallory") for s in known]
    asked = fresh + intruders + contested

    async with asyncio.timeout(CALL_TIMEOUT):
        results = await asyncio.gather(*(second.claim_session(claim) for claim in asked))

    assert results[: len(fresh)] == fresh
    assert results[len(fresh) : len(fresh) + len(known)] == known
    assert results[-2] == results[-1] and results[-1] in contested
    for session in [*fresh, *known, results[-1]]:
        assert await first.get_session(session.chat_id) == session


async def test_an_added_message_reads_back_equal(chats: ChatRepository) -> None:
    new = NewMessage(
        chat_id=new_id(),
        flow_id=new_id(),
        user_id="alice",
        is_bot=True,
        category=Category.ANSWER,
        message="多行\nanswer " * 100,
        turn_id=new_id(),
        status=MessageStatus.STOPPED,
        client_msg_id="client-1",
    )
    before = datetime.now(UTC)

    stored = await chats.add_message(new)

    assert isinstance(stored.id, int)
    assert before - timedelta(seconds=5) <= stored.created_at <= datetime.now(UTC)
    assert (stored.chat_id, stored.flow_id, stored.user_id, stored.is_bot) == (
        new.chat_id,
        new.flow_id,
        "alice",
        True,
    )
    assert (stored.category, stored.message, stored.turn_id) == (
        Category.ANSWER,
        new.message,
        new.turn_id,
    )
    assert (stored.status, stored.client_msg_id) == (MessageStatus.STOPPED, "client-1")
    assert await chats.history(new.chat_id, None, 10) == [stored]


async def test_a_burst_of_messages_is_stored_once_each_with_its_own_id(
    open_chats: OpenChats,
) -> None:
    """What a hundred turns starting at once store (the PostgreSQL adapter joins them into
    few statements): each message gets its id, a (turn, category) stored already or asked
    twice in the burst gets the one stored row, and history has each message once."""
    first, second = open_chats(), open_chats()
    chat_id = new_id()
    stored_before = await first.add_message(NewMessageFactory.build(chat_id=chat_id))
    fresh = [NewMessageFactory.build(chat_id=chat_id) for _ in range(40)]
    again = msgspec.structs.replace(stored_before, message="a retry's text")  # same turn+category
    repeated = NewMessageFactory.build(chat_id=chat_id)
    asked = [*fresh, _as_new(again), repeated, repeated]

    async with asyncio.timeout(CALL_TIMEOUT):
        results = await asyncio.gather(*(second.add_message(m) for m in asked))

    ids = [r.id for r in results]
    assert len(set(ids[: len(fresh)])) == len(fresh)
    assert [r.message for r in results[: len(fresh)]] == [m.message for m in fresh]
    assert results[len(fresh)].id == stored_before.id
    assert results[len(fresh)].message == stored_before.message
    assert results[-1].id == results[-2].id
    history = await first.history(chat_id, None, 100)
    assert sorted(m.id for m in history) == sorted({stored_before.id, *ids})


def _as_new(message: ChatMessage) -> NewMessage:
    return NewMessage(
        chat_id=message.chat_id,
        flow_id=message.flow_id,
        user_id=message.user_id,
        is_bot=message.is_bot,
        category=message.category,
        message=message.message,
        turn_id=message.turn_id,
        status=message.status,
        client_msg_id=message.client_msg_id,
    )


async def test_history_pages_newest_first_by_before_id(chats: ChatRepository) -> None:
    chat_id = new_id()
    ids = await add_messages(chats, chat_id, 5)
    await add_messages(chats, new_id(), 3)

    pages: list[list[int]] = []
    before_id: int | None = None
    while page := [m.id for m in await chats.history(chat_id, before_id, 2)]:
        pages.append(page)
        before_id = page[-1]

    newest_first = ids[::-1]
    assert pages == [newest_first[0:2], newest_first[2:4], newest_first[4:5]]
    assert [m.id for m in await chats.history(chat_id, None, 100)] == newest_first
    assert await chats.history(new_id(), None, 10) == []


async def test_after_gives_later_messages_oldest_first(chats: ChatRepository) -> None:
    chat_id = new_id()
    ids = await add_messages(chats, chat_id, 4)
    await add_messages(chats, new_id(), 2)

    assert [m.id for m in await chats.after(chat_id, ids[0], 2)] == ids[1:3]
    assert [m.id for m in await chats.after(chat_id, ids[0], 100)] == ids[1:]
    assert [m.id for m in await chats.after(chat_id, 0, 100)] == ids
    assert await chats.after(chat_id, ids[-1], 100) == []


async def test_messages_of_turn_are_the_question_and_its_answer(chats: ChatRepository) -> None:
    chat_id, turn, other_turn = new_id(), new_id(), new_id()
    question = await chats.add_message(
        NewMessageFactory.build(
            chat_id=chat_id,
            turn_id=turn,
            is_bot=False,
            category=Category.QUESTION,
            client_msg_id="c1",
        )
    )
    await chats.add_message(
        NewMessageFactory.build(chat_id=chat_id, turn_id=other_turn, client_msg_id="c2")
    )
    answer = await chats.add_message(
        NewMessageFactory.build(
            chat_id=chat_id,
            turn_id=turn,
            is_bot=True,
            category=Category.ANSWER,
            status=MessageStatus.COMPLETE,
        )
    )
    await chats.add_message(NewMessageFactory.build(chat_id=new_id(), client_msg_id="c1"))

    assert await chats.messages_of_turn(chat_id, "c1") == [question, answer]
    assert await chats.messages_of_turn(chat_id, "unknown") == []


async def test_an_unreachable_store_raises_store_unavailable(
    unreachable_chats: ChatRepository,
) -> None:
    session = ChatSession(chat_id=new_id(), flow_id=new_id(), user_id="alice")
    async with asyncio.timeout(CALL_TIMEOUT):
        with pytest.raises(StoreUnavailable):
            await unreachable_chats.get_session(session.chat_id)
        with pytest.raises(StoreUnavailable):
            await unreachable_chats.claim_session(session)
        with pytest.raises(StoreUnavailable):
            await unreachable_chats.add_message(NewMessageFactory.build())
        with pytest.raises(StoreUnavailable):
            await unreachable_chats.history(session.chat_id, None, 10)


@pytest.fixture(params=[backend for backend in SQL_BACKENDS if backend != FAKE])
def sql_chats(request: pytest.FixtureRequest, clients: Clients) -> SqlChatRepository:
    """The SQL adapter alone: the health ping is its own (the fake has no database)."""
    return clients.sql_chats(database_url(request, request.param))


@pytest.fixture(params=[backend for backend in SQL_BACKENDS if backend != FAKE])
def unreachable_sql_chats(
    request: pytest.FixtureRequest, clients: Clients, tmp_path: Path
) -> SqlChatRepository:
    return clients.sql_chats(unreachable_database_url(request.param, tmp_path))


async def test_the_health_ping_answers(sql_chats: SqlChatRepository) -> None:
    async with asyncio.timeout(CALL_TIMEOUT):
        await sql_chats.ping()
        await sql_chats.ping()  # again, on the lane the first one returned (PostgreSQL)


async def test_the_health_ping_tells_an_unreachable_store(
    unreachable_sql_chats: SqlChatRepository,
) -> None:
    async with asyncio.timeout(CALL_TIMEOUT):
        with pytest.raises(StoreUnavailable):
            await unreachable_sql_chats.ping()
