"""The ports the domain needs, as ``typing.Protocol``s. Adapters live in ``app.infra``.

Each port holds only the methods the domain really calls. Every adapter raises
:class:`~app.domain.errors.StoreUnavailable` when its backing store cannot be reached.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from app.domain.builds import BuildRecord
from app.domain.chats import ChatMessage, ChatSession, NewMessage
from app.domain.flows import Flow, FlowStatus, FlowVersion, Graph
from app.domain.llm import ModelMessage
from app.domain.users import User


class FlowRepository(Protocol):
    async def get(self, flow_id: str) -> Flow | None: ...

    async def get_version(self, version_id: int) -> FlowVersion | None: ...

    async def add(self, name: str, owner_id: str, graph: Graph, status: FlowStatus) -> Flow: ...

    async def set_status(self, flow_id: str, status: FlowStatus) -> Flow | None: ...

    async def delete(self, flow_id: str) -> bool: ...

    async def list(self) -> Sequence[Flow]: ...

    async def add_version(
        self, flow_id: str, name: str, graph: Graph, make_current: bool
    ) -> FlowVersion: ...


class ChatRepository(Protocol):
    async def get_session(self, chat_id: str) -> ChatSession | None: ...

    async def claim_session(self, session: ChatSession) -> ChatSession:
        """Create the session, or return the one already stored under its ``chat_id``.

        Atomic: of two concurrent claims of a new id exactly one wins, and both callers get
        the winner back, so the caller can compare owners.
        """
        ...

    async def add_message(self, message: NewMessage) -> ChatMessage: ...

    async def messages_of_turn(self, chat_id: str, client_msg_id: str) -> Sequence[ChatMessage]:
        """The messages (question, then answer if stored) of the turn a client id started."""
        ...

    async def history(
        self, chat_id: str, before_id: int | None, limit: int
    ) -> Sequence[ChatMessage]:
        """Up to ``limit`` messages with ``id < before_id`` (all if None), newest first."""
        ...

    async def after(self, chat_id: str, after_id: int, limit: int) -> Sequence[ChatMessage]:
        """Up to ``limit`` messages with ``id > after_id``, oldest first."""
        ...


class BuildStore(Protocol):
    async def get(self, flow_id: str, version_id: int | None) -> BuildRecord | None: ...

    async def put(self, record: BuildRecord, ttl_seconds: int) -> None: ...


class TokenVerifier(Protocol):
    async def verify(self, token: str) -> User:
        """The user the token proves, or :class:`~app.domain.errors.InvalidToken`."""
        ...


class Translator(Protocol):
    async def translate(self, text: str, target_language: str) -> str: ...


class ChatModel(Protocol):
    def stream(
        self,
        messages: Sequence[ModelMessage],
        *,
        model: str | None = None,
        temperature: float | None = None,
    ) -> AsyncIterator[str]:
        """The answer's text, piece by piece. Closing the iterator cancels the call."""
        ...


class ChatBusListener(Protocol):
    """What a chat bus tells this process about chats it joined."""

    async def on_remote_frame(self, chat_id: str, frame: bytes) -> None: ...

    def on_remote_stop(self, chat_id: str) -> None: ...

    def on_remote_join(self, chat_id: str) -> None: ...


class ChatBus(Protocol):
    """Carries a chat's frames and stop requests between server processes, and knows which
    chats have a running turn, so that every process of a deployment shares a chat."""

    def attach(self, listener: ChatBusListener) -> None: ...

    async def join(self, chat_id: str) -> None:
        """Start receiving this chat's frames, and tell the processes already in it."""
        ...

    async def leave(self, chat_id: str) -> None: ...

    async def publish(self, chat_id: str, frame: bytes) -> bool:
        """Send a frame to the other processes in the chat; False if none listens."""
        ...

    async def request_stop(self, chat_id: str) -> None: ...

    async def claim_turn(self, chat_id: str, turn_id: str, ttl_seconds: float) -> bool:
        """Atomically mark a turn as running in the chat; False if one already runs."""
        ...

    async def release_turn(self, chat_id: str, turn_id: str) -> None: ...

    async def turn_running(self, chat_id: str) -> bool: ...
