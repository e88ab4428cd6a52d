"""The ports the domain needs, as ``typing.Protocol``s. Adapters live in ``app.infra``.

Each port holds only the methods the domain really calls. Every adapter raises
:class:`~app.domain.errors.StoreUnavailable` when its backing store cannot be reached.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Sequence
from datetime import datetime
from typing import Protocol

from app.domain.builds import BuildRecord
from app.domain.chats import ChatMessage, ChatSession, NewMessage, TurnRecord
from app.domain.flows import Flow, FlowStatus, FlowVersion, Graph
from app.domain.llm import ModelMessage
from app.domain.turn_log import LogSlice
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

    def claim_durability(self, chat_id: str) -> asyncio.Future[bool] | None:
        """Whether what :meth:`claim_session` last answered here for ``chat_id`` would survive
        a crash of the store: None if it would already; else a future that becomes True once
        it would, or False if the store may have lost it (it restarted first). A store may
        answer a claim before it is durable; until then the caller trusts it for this admission
        only (it caches nothing), and the chat's other calls wait for it or fail."""
        ...

    async def add_message(self, message: NewMessage) -> ChatMessage:
        """Store the question or the answer of a turn, once: if the turn already has a message
        of that category (a retry after a lost reply, or a turn finished twice), that stored
        message is returned unchanged."""
        ...

    async def unanswered(self, created_before: datetime, limit: int) -> Sequence[ChatMessage]:
        """Questions created before ``created_before`` that have no answer, oldest first."""
        ...

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


class TurnLease(Protocol):
    """A running turn's claim on its chat: held while renewed, free again once it lapses.

    One holder per chat at a time, across every process. A holder names who runs the turn
    (``<process id>/<turn id>``). A lease that lapsed without being released (its process
    died) stays listed by :meth:`lapsed` until someone acquires and releases it.
    """

    async def acquire(self, chat_id: str, holder: str, ttl: float) -> bool:
        """Take the chat if no live lease holds it; False if one does."""
        ...

    async def renew(self, held: Sequence[tuple[str, str]], ttl: float) -> list[bool]:
        """Extend each ``(chat_id, holder)`` lease; False where another holder has the chat.

        A lease that vanished (it lapsed, or the store lost it) is taken again.
        """
        ...

    async def release(self, chat_id: str, holder: str) -> None:
        """Free the chat if ``holder`` still holds it."""
        ...

    async def holder(self, chat_id: str) -> str | None: ...

    async def lapsed(self, limit: int) -> list[str]:
        """Chats whose lease expired without a release: their turn's process is gone."""
        ...


class TurnLog(Protocol):
    """A turn's frames by position, kept while it runs and ``ttl`` seconds after it ends, and
    the chat's latest :class:`TurnRecord`.

    Writes do not wait: they are batched and written in order, each frame appended to the log
    before it is published to the chat's other processes (a receiver that sees a gap can fill
    it from the log). What cannot be written while the store is away is kept, bounded, and
    written when it is back.
    """

    def start(self, record: TurnRecord) -> None:
        """The chat's latest turn is now ``record``."""
        ...

    def append(self, chat_id: str, turn_id: str, seq: int, frame: bytes) -> None:
        """Log the frame at position ``seq`` and publish it to the chat's other processes."""
        ...

    def end(self, record: TurnRecord) -> None:
        """The turn ended (``record`` says whether its answer is stored); its log now expires."""
        ...

    async def read(self, chat_id: str, turn_id: str, after_seq: int) -> LogSlice | None:
        """The logged frames after ``after_seq``, in order; None if the log has no such turn."""
        ...

    async def current(self, chat_id: str) -> TurnRecord | None:
        """The chat's latest turn, running or ended, while its log is kept."""
        ...

    async def flush(self) -> None:
        """Wait until everything logged so far is written; StoreUnavailable if it cannot be."""
        ...


class FanOutListener(Protocol):
    """What the chat fan-out tells this process about chats it joined."""

    def on_frames(self, chat_id: str, turn_id: str, first_seq: int, frames: list[bytes]) -> None:
        """Frames another process appended to a turn of the chat, from ``first_seq`` on."""
        ...

    def on_resync(self) -> None:
        """The fan-out reconnected: frames published meanwhile are only in the turn log."""
        ...


class ChatFanOut(Protocol):
    """Delivers to this process the frames other processes append to the turn logs of the
    chats it joined (publishing is part of :meth:`TurnLog.append`)."""

    def attach(self, listener: FanOutListener) -> None: ...

    async def join(self, chat_id: str) -> None: ...

    async def leave(self, chat_id: str) -> None: ...


class ControlListener(Protocol):
    def on_stop(self, chat_id: str) -> None:
        """Someone asked to stop the turn running in the chat."""
        ...


class TurnControl(Protocol):
    """Control messages between processes: a ``stop`` reaches the process running the turn."""

    def attach(self, listener: ControlListener) -> None: ...

    async def request_stop(self, chat_id: str) -> None: ...


class ConnectionCounter(Protocol):
    """Open connections per user, counted across every process; a dead process's entries
    expire on their own."""

    async def acquire(self, user_id: str, slot: str, limit: int) -> bool:
        """Count ``slot`` for the user unless they already have ``limit`` open."""
        ...

    async def release(self, user_id: str, slot: str) -> None: ...


class ChatOwnerCache(Protocol):
    """The owners of claimed chats, remembered for every process: ownership never changes once
    claimed, so a process that has not seen a chat (a fresh one, after a deploy) can learn its
    owner without asking the database. Only a hint: a miss or a failure answers None, and the
    chat repository decides."""

    def lookup(self, chat_id: str) -> Awaitable[ChatSession | None]:
        """The remembered owner, or None. Sent at once, before it is awaited: a lookup made
        just before another store call of the same admission shares its round trip where the
        adapter can. Never raises, and need not be awaited."""
        ...

    def remember(self, session: ChatSession) -> None:
        """Remember a claimed chat's owner, as the chat repository returned it (in the
        background: nobody waits for it, and a failure only leaves it unremembered)."""
        ...
