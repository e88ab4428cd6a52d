"""One question and one answer per turn: storing a message is idempotent per turn.

A retry after a lost reply, or a turn finished by two processes, must not store its answer
twice. The index also serves the search for questions without an answer.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "uq_chat_message_turn_id_category",
        "chat_message",
        ["turn_id", "category"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("uq_chat_message_turn_id_category", table_name="chat_message")
