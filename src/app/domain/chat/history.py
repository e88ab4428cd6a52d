"""History and replay frames, from persisted messages."""

from __future__ import annotations

from collections.abc import Sequence

from app.domain import frames
from app.domain.chat.turn_frames import TurnFrames
from app.domain.chats import ChatMessage, MessageStatus
from app.domain.frames import HistoryFrame, HistoryItem

RESUME_LIMIT = 100
EMPTY_HISTORY = frames.encode(HistoryFrame(messages=[], has_more=False))


def history_frame(messages: Sequence[ChatMessage], limit: int) -> bytes:
    """Up to ``limit`` of ``messages``; ``has_more`` if there were more."""
    items = [
        HistoryItem(
            message_id=m.id,
            is_bot=m.is_bot,
            category=m.category,
            message=m.message,
            status=m.status,
            created_at=m.created_at,
        )
        for m in messages[:limit]
    ]
    return frames.encode(HistoryFrame(messages=items, has_more=len(messages) > limit))


def replay(
    flow_id: str, chat_id: str, question: ChatMessage, answer: ChatMessage | None
) -> list[bytes]:
    """A stored turn, again: ``begin``, ``end`` and ``close`` with its own ids and text."""
    turn = TurnFrames(
        flow_id=flow_id, chat_id=chat_id, user_id=question.user_id, turn_id=question.turn_id
    )
    if answer is None:  # only when the turn could not be finished yet (its store is away)
        end = turn.frame("end", "", status=MessageStatus.FAILED, numbered=False)
    else:
        end = turn.frame(
            "end", answer.message, message_id=answer.id, status=answer.status, numbered=False
        )
    begin = turn.frame(
        "begin",
        question.message,
        category="question",
        is_bot=False,
        message_id=question.id,
        numbered=False,
    )
    return [begin, end, turn.frame("close", "", numbered=False)]
