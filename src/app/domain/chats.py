"""Chat sessions (a user's conversation with a flow) and their persisted messages."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import msgspec


class MessageStatus(StrEnum):
    COMPLETE = "complete"
    STOPPED = "stopped"
    FAILED = "failed"


class Category(StrEnum):
    QUESTION = "question"
    ANSWER = "answer"


class ChatSession(msgspec.Struct, frozen=True):
    chat_id: str
    flow_id: str
    user_id: str


class NewMessage(msgspec.Struct, frozen=True):
    """A message to persist; the store assigns ``id`` and ``created_at``."""

    chat_id: str
    flow_id: str
    user_id: str
    is_bot: bool
    category: Category
    message: str
    turn_id: str
    status: MessageStatus | None = None
    client_msg_id: str | None = None


class ChatMessage(msgspec.Struct, frozen=True):
    id: int
    chat_id: str
    flow_id: str
    user_id: str
    is_bot: bool
    category: Category
    message: str
    turn_id: str
    created_at: datetime
    status: MessageStatus | None = None
    client_msg_id: str | None = None
