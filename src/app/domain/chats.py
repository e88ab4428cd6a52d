"""Chat sessions (a user's conversation with a flow) and their persisted messages."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import msgspec


class MessageStatus(StrEnum):
    COMPLETE = "complete"
    STOPPED = "stopped"
    FAILED = "failed"
    #: The turn's process died, or was shut down past the grace period, mid-answer: the answer
    #: is what had been streamed (and logged) by then.
    INTERRUPTED = "interrupted"


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

    def stored(self, id_: int, created_at: datetime) -> ChatMessage:
        """This message as its store keeps it, under the id and time the store gave it."""
        return ChatMessage(id=id_, created_at=created_at, **msgspec.structs.asdict(self))


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


class TurnState(StrEnum):
    RUNNING = "running"
    ENDED = "ended"


class TurnRecord(msgspec.Struct, frozen=True):
    """What the turn log keeps about a chat's latest turn, so that any process can finish it.

    ``answer_stored`` is False while the turn runs and when it ended without its answer
    stored (the database was away for longer than the retries): such a turn is finished by
    whoever next holds the chat's lease (:mod:`app.domain.chat.finaliser`).
    """

    chat_id: str
    turn_id: str
    flow_id: str
    user_id: str
    #: The lease holder running the turn (``<process id>/<turn id>``).
    holder: str
    question_id: int | None = None
    client_msg_id: str | None = None
    state: TurnState = TurnState.RUNNING
    answer_stored: bool = False

    @property
    def finished(self) -> bool:
        return self.state is TurnState.ENDED and self.answer_stored
