"""Messages the store tests write, made alike."""

from __future__ import annotations

import uuid

from app.domain.chats import Category, ChatSession, NewMessage


def question_in(chat: ChatSession, text: str = "hello") -> NewMessage:
    """A user's question in ``chat``, of a new turn."""
    return NewMessage(
        chat_id=chat.chat_id,
        flow_id=chat.flow_id,
        user_id=chat.user_id,
        is_bot=False,
        category=Category.QUESTION,
        message=text,
        turn_id=uuid.uuid4().hex,
    )
