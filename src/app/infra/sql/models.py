"""ORM rows of the SQL adapters. Only ``app.infra.sql`` sees these; the domain gets Structs.

The migration in ``migrations/versions`` creates exactly these tables; change both together.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from advanced_alchemy.base import DefaultBase, IdentityAuditBase, IdentityBase
from advanced_alchemy.mixins import AuditColumns
from advanced_alchemy.types import DateTimeUTC, JsonB
from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column


def _now() -> datetime:
    return datetime.now(UTC)


class FlowRow(AuditColumns, DefaultBase):
    __tablename__ = "flow"

    #: A uuid4 hex string, chosen by the adapter.
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    owner_id: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[int] = mapped_column(Integer)
    graph: Mapped[dict[str, Any]] = mapped_column(JsonB)
    # No foreign key: it would make flow and flow_version reference each other.
    current_version_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class FlowVersionRow(IdentityAuditBase):
    __tablename__ = "flow_version"
    # Never reuse the id of a deleted version on SQLite: a client may still hold it.
    __table_args__ = ({"sqlite_autoincrement": True},)

    flow_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("flow.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(255))
    graph: Mapped[dict[str, Any]] = mapped_column(JsonB)


class ChatSessionRow(DefaultBase):
    __tablename__ = "chat_session"

    chat_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    flow_id: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True), default=_now)


class ChatMessageRow(IdentityBase):
    __tablename__ = "chat_message"
    __table_args__ = (
        # (chat_id, id) serves history and resume; it also indexes chat_id alone.
        Index("ix_chat_message_chat_id_id", "chat_id", "id"),
        Index("ix_chat_message_chat_id_client_msg_id", "chat_id", "client_msg_id"),
        # One question and one answer per turn (migration 0002): storing is idempotent.
        Index("uq_chat_message_turn_id_category", "turn_id", "category", unique=True),
        # Message ids order history and resume points, so on SQLite too they must only grow.
        {"sqlite_autoincrement": True},
    )

    chat_id: Mapped[str] = mapped_column(String(64))
    flow_id: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[str] = mapped_column(String(64))
    is_bot: Mapped[bool] = mapped_column(Boolean)
    category: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    status: Mapped[str | None] = mapped_column(String(32), nullable=True)
    turn_id: Mapped[str] = mapped_column(String(64))
    client_msg_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True), default=_now)


class BuildRecordRow(DefaultBase):
    """The embedded build store: shared through the database by the CLI and the server."""

    __tablename__ = "build_record"

    #: ``flow_data_{flow_id}`` or ``flow_data_{flow_id}_{version_id}``.
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    flow_id: Mapped[str] = mapped_column(String(32))
    version_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    status: Mapped[str] = mapped_column(String(32))
    graph_data: Mapped[dict[str, Any] | None] = mapped_column(JsonB, nullable=True)
    problems: Mapped[list[str]] = mapped_column(JsonB)
    expires_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True), index=True)
