"""Flows and their versions, chat sessions and messages, and the embedded build store.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from advanced_alchemy.types import DateTimeUTC, JsonB
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# BIGINT on PostgreSQL; on SQLite only INTEGER PRIMARY KEY is an autoincrementing rowid.
BigIntId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "flow",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("owner_id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("graph", JsonB, nullable=False),
        sa.Column("current_version_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", DateTimeUTC(timezone=True), nullable=False),
        sa.Column("updated_at", DateTimeUTC(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_flow")),
    )
    op.create_index(op.f("ix_flow_owner_id"), "flow", ["owner_id"])

    op.create_table(
        "flow_version",
        sa.Column("id", BigIntId, sa.Identity(start=1, increment=1), nullable=False),
        sa.Column("flow_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("graph", JsonB, nullable=False),
        sa.Column("created_at", DateTimeUTC(timezone=True), nullable=False),
        sa.Column("updated_at", DateTimeUTC(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["flow_id"], ["flow.id"], name=op.f("fk_flow_version_flow_id_flow"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_flow_version")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_flow_version_flow_id"), "flow_version", ["flow_id"])

    op.create_table(
        "chat_session",
        sa.Column("chat_id", sa.String(length=64), nullable=False),
        sa.Column("flow_id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", DateTimeUTC(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("chat_id", name=op.f("pk_chat_session")),
    )

    op.create_table(
        "chat_message",
        sa.Column("id", BigIntId, sa.Identity(start=1, increment=1), nullable=False),
        sa.Column("chat_id", sa.String(length=64), nullable=False),
        sa.Column("flow_id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("is_bot", sa.Boolean(), nullable=False),
        sa.Column("category", sa.String(length=32), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=True),
        sa.Column("turn_id", sa.String(length=64), nullable=False),
        sa.Column("client_msg_id", sa.String(length=128), nullable=True),
        sa.Column("created_at", DateTimeUTC(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chat_message")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_chat_message_chat_id_id", "chat_message", ["chat_id", "id"])
    op.create_index(
        "ix_chat_message_chat_id_client_msg_id", "chat_message", ["chat_id", "client_msg_id"]
    )

    op.create_table(
        "build_record",
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("flow_id", sa.String(length=32), nullable=False),
        sa.Column("version_id", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("graph_data", JsonB, nullable=True),
        sa.Column("problems", JsonB, nullable=False),
        sa.Column("expires_at", DateTimeUTC(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_build_record")),
    )
    op.create_index(op.f("ix_build_record_expires_at"), "build_record", ["expires_at"])


def downgrade() -> None:
    op.drop_table("build_record")
    op.drop_table("chat_message")
    op.drop_table("chat_session")
    op.drop_table("flow_version")
    op.drop_table("flow")
