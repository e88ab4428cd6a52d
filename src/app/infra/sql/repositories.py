"""The SQL adapters of :class:`~app.domain.ports.FlowRepository` and
:class:`~app.domain.ports.ChatRepository`. They return domain Structs, never rows.

Build one from the config's session maker::

    config = make_sqlalchemy_config(settings.database_url)
    flows = SqlFlowRepository(config.create_session_maker())
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

from advanced_alchemy.filters import LimitOffset
from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from sqlalchemy import Table, bindparam, select, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import aliased
from sqlalchemy.sql.expression import Executable

from app.domain.chats import Category, ChatMessage, ChatSession, MessageStatus, NewMessage
from app.domain.errors import NotFound, StoreUnavailable
from app.domain.flows import Flow, FlowStatus, FlowVersion, Graph
from app.infra.sql.claims import ChatClaims
from app.infra.sql.health import ping_database
from app.infra.sql.lanes import DriverLanes
from app.infra.sql.message_batches import MessageBatches
from app.infra.sql.models import ChatMessageRow, ChatSessionRow, FlowRow, FlowVersionRow
from app.infra.sql.sessions import SessionMaker, database_errors_as_unavailable, unit_of_work


class _FlowRows(SQLAlchemyAsyncRepository[FlowRow]):
    model_type = FlowRow


class _FlowVersionRows(SQLAlchemyAsyncRepository[FlowVersionRow]):
    model_type = FlowVersionRow


class _ChatSessionRows(SQLAlchemyAsyncRepository[ChatSessionRow]):
    model_type = ChatSessionRow
    id_attribute = "chat_id"


class _ChatMessageRows(SQLAlchemyAsyncRepository[ChatMessageRow]):
    model_type = ChatMessageRow


class SqlFlowRepository:
    def __init__(self, sessions: SessionMaker) -> None:
        self._sessions = sessions

    async def get(self, flow_id: str) -> Flow | None:
        async with unit_of_work(self._sessions) as session:
            row = await _FlowRows(session=session).get_one_or_none(FlowRow.id == flow_id)
            return None if row is None else _flow(row)

    async def get_version(self, version_id: int) -> FlowVersion | None:
        async with unit_of_work(self._sessions) as session:
            row = await _FlowVersionRows(session=session).get_one_or_none(
                FlowVersionRow.id == version_id
            )
            return None if row is None else _version(row)

    async def add(self, name: str, owner_id: str, graph: Graph, status: FlowStatus) -> Flow:
        row = FlowRow(
            id=uuid.uuid4().hex, name=name, owner_id=owner_id, status=int(status), graph=graph
        )
        async with unit_of_work(self._sessions) as session:
            await _FlowRows(session=session).add(row)
            await session.commit()
            return _flow(row)

    async def set_status(self, flow_id: str, status: FlowStatus) -> Flow | None:
        async with unit_of_work(self._sessions) as session:
            row = await _FlowRows(session=session).get_one_or_none(FlowRow.id == flow_id)
            if row is None:
                return None
            row.status = int(status)
            await session.commit()
            return _flow(row)

    async def delete(self, flow_id: str) -> bool:
        """Delete the flow; the database deletes its versions (ON DELETE CASCADE)."""
        async with unit_of_work(self._sessions) as session:
            # No sanity check: another process deleting the same flow meanwhile is no error.
            deleted = await _FlowRows(session=session).delete_where(
                FlowRow.id == flow_id, sanity_check=False
            )
            await session.commit()
            return bool(deleted)

    async def list(self) -> Sequence[Flow]:
        async with unit_of_work(self._sessions) as session:
            rows = await _FlowRows(session=session).get_many(
                order_by=[(FlowRow.created_at, False), (FlowRow.id, False)]
            )
            return [_flow(row) for row in rows]

    async def add_version(
        self, flow_id: str, name: str, graph: Graph, make_current: bool
    ) -> FlowVersion:
        async with unit_of_work(self._sessions) as session:
            flow = await _FlowRows(session=session).get_one_or_none(FlowRow.id == flow_id)
            if flow is None:
                raise NotFound(f"flow {flow_id} not found")
            version = FlowVersionRow(flow_id=flow_id, name=name, graph=graph)
            await _FlowVersionRows(session=session).add(version)
            if make_current:
                flow.graph = graph
                flow.current_version_id = version.id
            await session.commit()
            return _version(version)


class SqlChatRepository:
    def __init__(self, sessions: SessionMaker, engine: AsyncEngine | None = None) -> None:
        """``engine``: the one ``sessions`` is bound to, if not given."""
        self._sessions = sessions
        engine = engine or _bound_engine(sessions)
        #: PostgreSQL: the held connections of concurrent turns' messages (one statement per
        #: batch), the health ping and the claims' proofs; the claims keep lanes of their own
        #: (app.infra.sql.claims). SQLite claims on a thread of its own, stores one by one.
        self._engine = engine
        postgres = engine.dialect.name == "postgresql"
        self._lanes = DriverLanes(engine) if postgres else None
        self._claims = ChatClaims(engine, postgres=postgres, flushing=self._lanes)
        self._batches = (
            None if self._lanes is None else MessageBatches(self._lanes, self._add_message_alone)
        )

    async def ping(self) -> None:
        """Whether the database answers (the health check, every second): on PostgreSQL a
        ``SELECT 1`` on a lane, which costs the driver's work only; through the pool, the
        checkout, the transaction and its reset were most of a check's CPU, which an idle
        process pays all day."""
        if self._lanes is None:
            with database_errors_as_unavailable():
                await ping_database(self._engine)
            return
        await self._lanes.run(_select_one)

    async def aclose(self) -> None:
        """Wait for the claims and messages under way; return the held connections."""
        if self._batches is not None:
            await self._batches.aclose()
        await self._claims.aclose()
        if self._lanes is not None:
            await self._lanes.aclose()

    async def get_session(self, chat_id: str) -> ChatSession | None:
        async with unit_of_work(self._sessions) as session:
            row = await _ChatSessionRows(session=session).get_one_or_none(
                ChatSessionRow.chat_id == chat_id
            )
            return None if row is None else _chat_session(row)

    async def claim_session(self, session: ChatSession) -> ChatSession:
        """The chat's owner: ``session`` if the id was free (it is now claimed), else whoever
        claimed it first, here or in another process (see :mod:`app.infra.sql.claims`)."""
        return await self._claims.claim(session)

    def claim_durability(self, chat_id: str) -> asyncio.Future[bool] | None:
        """On PostgreSQL, the proof of this process's latest claim of the chat while it is
        awaited (:mod:`app.infra.sql.claims`); None once it is durable."""
        return self._claims.durability(chat_id)

    async def _claim_proven(self, chat_id: str) -> None:
        """The chat's reads and writes wait until this process's claim of it is proven
        durable, and fail if the database lost it: nothing is stored in, or read from, a chat
        whose owner the database might not know."""
        pending = self._claims.durability(chat_id)
        if pending is None:
            return
        if not pending.done():
            self._claims.hurry(chat_id)
        # Shielded: the future is shared by every caller of this chat and by the admission.
        durable = pending.result() if pending.done() else await asyncio.shield(pending)
        if not durable:
            raise StoreUnavailable("the database restarted before this chat's claim was stored")

    async def add_message(self, message: NewMessage) -> ChatMessage:
        """The message stored, or the one its turn had already in its category (a retry, or a
        second finaliser): storing is idempotent. Two of these per turn, on the hot path of
        every turn: batched on PostgreSQL (:mod:`app.infra.sql.message_batches`)."""
        if self._claims.durability(message.chat_id) is not None:  # a dict look-up: per turn
            await self._claim_proven(message.chat_id)
        if self._batches is not None:
            return await self._batches.add(message)
        return await self._add_message_alone(message)

    async def _add_message_alone(self, message: NewMessage) -> ChatMessage:
        """INSERT ... ON CONFLICT (turn_id, category) DO NOTHING RETURNING id; the stored row
        only if the turn already had one. Core statements compiled once, where the ORM unit
        of work cost several times as much."""
        now = datetime.now(UTC)
        values = {
            "chat_id": message.chat_id,
            "flow_id": message.flow_id,
            "user_id": message.user_id,
            "is_bot": message.is_bot,
            "category": message.category.value,
            "message": message.message,
            "status": None if message.status is None else message.status.value,
            "turn_id": message.turn_id,
            "client_msg_id": message.client_msg_id,
            "created_at": now,
        }
        async with unit_of_work(self._sessions) as session:
            row = (await session.execute(_MESSAGE_INSERT, values)).first()
            if row is None:
                existing = (await session.execute(_MESSAGE_FIND, values)).scalars().one()
                await session.commit()
                return _message(existing)
            await session.commit()
        return message.stored(row[0], now)

    async def messages_of_turn(self, chat_id: str, client_msg_id: str) -> Sequence[ChatMessage]:
        """The messages (question, then answer if stored) of the turn a client id started."""
        await self._claim_proven(chat_id)
        turns_of_client_id = select(ChatMessageRow.turn_id).where(
            ChatMessageRow.chat_id == chat_id, ChatMessageRow.client_msg_id == client_msg_id
        )
        async with unit_of_work(self._sessions) as session:
            rows = await _ChatMessageRows(session=session).get_many(
                ChatMessageRow.chat_id == chat_id,
                ChatMessageRow.turn_id.in_(turns_of_client_id),
                order_by=(ChatMessageRow.id, False),
            )
            return [_message(row) for row in rows]

    async def unanswered(self, created_before: datetime, limit: int) -> Sequence[ChatMessage]:
        """Questions created before ``created_before`` that have no answer, oldest first."""
        answers = aliased(ChatMessageRow)
        has_answer = (
            select(answers.id)
            .where(answers.turn_id == ChatMessageRow.turn_id, answers.category == Category.ANSWER)
            .exists()
        )
        statement = (
            select(ChatMessageRow)
            .where(
                ChatMessageRow.category == Category.QUESTION,
                ChatMessageRow.created_at < created_before,
                ~has_answer,
            )
            .order_by(ChatMessageRow.id)
            .limit(limit)
        )
        async with unit_of_work(self._sessions) as session:
            rows = (await session.execute(statement)).scalars().all()
            return [_message(row) for row in rows]

    async def history(
        self, chat_id: str, before_id: int | None, limit: int
    ) -> Sequence[ChatMessage]:
        """Up to ``limit`` messages with ``id < before_id`` (all if None), newest first."""
        await self._claim_proven(chat_id)
        filters = [ChatMessageRow.chat_id == chat_id]
        if before_id is not None:
            filters.append(ChatMessageRow.id < before_id)
        async with unit_of_work(self._sessions) as session:
            rows = await _ChatMessageRows(session=session).get_many(
                *filters, LimitOffset(limit=limit, offset=0), order_by=(ChatMessageRow.id, True)
            )
            return [_message(row) for row in rows]

    async def after(self, chat_id: str, after_id: int, limit: int) -> Sequence[ChatMessage]:
        """Up to ``limit`` messages with ``id > after_id``, oldest first."""
        await self._claim_proven(chat_id)
        async with unit_of_work(self._sessions) as session:
            rows = await _ChatMessageRows(session=session).get_many(
                ChatMessageRow.chat_id == chat_id,
                ChatMessageRow.id > after_id,
                LimitOffset(limit=limit, offset=0),
                order_by=(ChatMessageRow.id, False),
            )
            return [_message(row) for row in rows]


def _bound_engine(sessions: SessionMaker) -> AsyncEngine:
    engine = getattr(sessions, "kw", {}).get("bind")
    if not isinstance(engine, AsyncEngine):
        raise TypeError("SqlChatRepository needs the engine its session maker is bound to")
    return engine


def _flow(row: FlowRow) -> Flow:
    return Flow(
        id=row.id,
        name=row.name,
        owner_id=row.owner_id,
        status=FlowStatus(row.status),
        graph=row.graph,
        current_version_id=row.current_version_id,
    )


def _version(row: FlowVersionRow) -> FlowVersion:
    return FlowVersion(id=row.id, flow_id=row.flow_id, name=row.name, graph=row.graph)


def _chat_session(row: ChatSessionRow) -> ChatSession:
    return ChatSession(chat_id=row.chat_id, flow_id=row.flow_id, user_id=row.user_id)


def _message(row: ChatMessageRow) -> ChatMessage:
    return ChatMessage(
        id=row.id,
        chat_id=row.chat_id,
        flow_id=row.flow_id,
        user_id=row.user_id,
        is_bot=row.is_bot,
        category=Category(row.category),
        message=row.message,
        turn_id=row.turn_id,
        created_at=row.created_at,
        status=None if row.status is None else MessageStatus(row.status),
        client_msg_id=row.client_msg_id,
    )


def _message_statements() -> tuple[Executable, Executable]:
    """The idempotent insert of a message and the read of the row it collided with.

    The insert is text, the same on SQLite and PostgreSQL: the dialects' ``insert`` constructs
    (``on_conflict_do_nothing``) have no cache key in SQLAlchemy 2.0, so they were compiled
    again on every call (a tenth of a connect's CPU when claims used one).
    """
    table = cast(Table, ChatMessageRow.__table__)
    columns = [column for column in table.c if column.name != "id"]
    names = [column.name for column in columns]
    insert = (
        text(
            f"INSERT INTO {table.name} ({', '.join(names)}) "
            f"VALUES ({', '.join(':' + name for name in names)}) "
            "ON CONFLICT (turn_id, category) DO NOTHING RETURNING id"
        )
        .bindparams(*(bindparam(column.name, type_=column.type) for column in columns))
        .columns(table.c.id)
    )
    find = select(ChatMessageRow).where(
        ChatMessageRow.turn_id == bindparam("turn_id"),
        ChatMessageRow.category == bindparam("category"),
    )
    return insert, find


_MESSAGE_INSERT, _MESSAGE_FIND = _message_statements()


async def _select_one(driver: Any) -> None:
    await driver.execute("SELECT 1")
