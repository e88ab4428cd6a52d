"""In-memory fakes of the domain's ports, for unit tests (flowgate's and extensions').

flowgate's contract suite (``tests/contract``) runs the same assertions against these and
against the real adapters, so that the fakes do not drift from them.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import msgspec

from app.domain.builds import BuildRecord, build_key
from app.domain.chats import ChatMessage, ChatSession, NewMessage
from app.domain.errors import InvalidToken, ModelError, NotFound, StoreUnavailable
from app.domain.flows import Flow, FlowStatus, FlowVersion, Graph
from app.domain.llm import ModelMessage
from app.domain.users import User


class _Switch:
    """Lets a test make a fake behave as if its store were unreachable: set ``down = True``
    and every call raises :class:`StoreUnavailable`."""

    down = False

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable(f"{type(self).__name__} is down")


class FakeFlowRepository(_Switch):
    """Flows and versions in dicts (``flows`` by id, ``versions`` by id)."""

    def __init__(self) -> None:
        self.flows: dict[str, Flow] = {}
        self.versions: dict[int, FlowVersion] = {}
        self._ids = itertools.count(1)

    async def get(self, flow_id: str) -> Flow | None:
        self._check()
        return self.flows.get(flow_id)

    async def get_version(self, version_id: int) -> FlowVersion | None:
        self._check()
        return self.versions.get(version_id)

    async def add(self, name: str, owner_id: str, graph: Graph, status: FlowStatus) -> Flow:
        self._check()
        flow = Flow(id=uuid.uuid4().hex, name=name, owner_id=owner_id, status=status, graph=graph)
        self.flows[flow.id] = flow
        return flow

    async def set_status(self, flow_id: str, status: FlowStatus) -> Flow | None:
        self._check()
        flow = self.flows.get(flow_id)
        if flow is None:
            return None
        self.flows[flow_id] = msgspec.structs.replace(flow, status=status)
        return self.flows[flow_id]

    async def delete(self, flow_id: str) -> bool:
        self._check()
        self.versions = {k: v for k, v in self.versions.items() if v.flow_id != flow_id}
        return self.flows.pop(flow_id, None) is not None

    async def list(self) -> Sequence[Flow]:
        self._check()
        return list(self.flows.values())

    async def add_version(
        self, flow_id: str, name: str, graph: Graph, make_current: bool
    ) -> FlowVersion:
        self._check()
        flow = self.flows.get(flow_id)
        if flow is None:
            raise NotFound(f"flow {flow_id} not found")
        version = FlowVersion(id=next(self._ids), flow_id=flow_id, name=name, graph=graph)
        self.versions[version.id] = version
        if make_current:
            self.flows[flow_id] = msgspec.structs.replace(
                flow, graph=graph, current_version_id=version.id
            )
        return version


class FakeChatRepository(_Switch):
    """Chat sessions in a dict and messages in a list (``sessions``, ``messages``)."""

    def __init__(self) -> None:
        self.sessions: dict[str, ChatSession] = {}
        self.messages: list[ChatMessage] = []
        #: Claims that a test has the store answer before they are durable (see
        #: ``ChatRepository.claim_durability``): chat id -> the future of their durability.
        self.unflushed_claims: dict[str, asyncio.Future[bool]] = {}
        self._ids = itertools.count(1)

    async def get_session(self, chat_id: str) -> ChatSession | None:
        self._check()
        return self.sessions.get(chat_id)

    async def claim_session(self, session: ChatSession) -> ChatSession:
        self._check()
        return self.sessions.setdefault(session.chat_id, session)

    def claim_durability(self, chat_id: str) -> asyncio.Future[bool] | None:
        """None (durable at once), unless a test put a future in ``unflushed_claims``."""
        return self.unflushed_claims.get(chat_id)

    async def add_message(self, message: NewMessage) -> ChatMessage:
        self._check()
        for existing in self.messages:
            if existing.turn_id == message.turn_id and existing.category == message.category:
                return existing
        stored = message.stored(next(self._ids), datetime.now(UTC))
        self.messages.append(stored)
        return stored

    async def messages_of_turn(self, chat_id: str, client_msg_id: str) -> Sequence[ChatMessage]:
        self._check()
        turn_ids = {
            m.turn_id
            for m in self.messages
            if m.chat_id == chat_id and m.client_msg_id == client_msg_id
        }
        return [m for m in self.messages if m.chat_id == chat_id and m.turn_id in turn_ids]

    async def unanswered(self, created_before: datetime, limit: int) -> Sequence[ChatMessage]:
        self._check()
        answered = {m.turn_id for m in self.messages if m.category == "answer"}
        return [
            m
            for m in self.messages
            if m.category == "question"
            and m.turn_id not in answered
            and m.created_at < created_before
        ][:limit]

    async def history(
        self, chat_id: str, before_id: int | None, limit: int
    ) -> Sequence[ChatMessage]:
        self._check()
        found = [
            m
            for m in reversed(self.messages)
            if m.chat_id == chat_id and (before_id is None or m.id < before_id)
        ]
        return found[:limit]

    async def after(self, chat_id: str, after_id: int, limit: int) -> Sequence[ChatMessage]:
        self._check()
        return [m for m in self.messages if m.chat_id == chat_id and m.id > after_id][:limit]


class FakeBuildStore(_Switch):
    """Build records by key, with their expiry (``records``)."""

    def __init__(self) -> None:
        self.records: dict[str, tuple[BuildRecord, float]] = {}

    async def get(self, flow_id: str, version_id: int | None) -> BuildRecord | None:
        self._check()
        found = self.records.get(build_key(flow_id, version_id))
        if found is None or found[1] < time.monotonic():
            return None
        return found[0]

    async def put(self, record: BuildRecord, ttl_seconds: int) -> None:
        self._check()
        self.records[record.key] = (record, time.monotonic() + ttl_seconds)


class FakeTokenVerifier:
    """Accepts the tokens it was given: ``{"token-of-alice": User(id="alice")}``."""

    def __init__(self, users: dict[str, User] | None = None) -> None:
        self.users = dict(users or {})

    async def verify(self, token: str) -> User:
        try:
            return self.users[token]
        except KeyError:
            raise InvalidToken("unknown token") from None


class FakeTranslator:
    """A scripted translator: ``"Hi"`` to ``zh`` is ``"translated[zh]: Hi"``; records
    ``calls`` as ``(text, target_language)``."""

    def __init__(self, prefix: str = "translated") -> None:
        self.prefix = prefix
        self.calls: list[tuple[str, str]] = []

    async def translate(self, text: str, target_language: str) -> str:
        self.calls.append((text, target_language))
        return f"{self.prefix}[{target_language}]: {text}"


class FakeChatModel:
    """A scripted chat model: streams ``pieces`` whatever it is asked, then raises ``fail`` if
    given (a :class:`ModelError`, as a provider failing mid-answer).

    With ``hold_after=n`` it stops after its first ``n`` pieces until the test sets
    ``release``: to see what happens while a model streams (a ``stop``, a socket that goes,
    frames read meanwhile). ``closed`` is set once a call's stream has ended or been closed
    (a cancelled turn or task closes it); ``calls`` holds each call's messages.
    """

    def __init__(
        self,
        pieces: Sequence[str] = ("Hello", " world"),
        fail: ModelError | None = None,
        hold_after: int | None = None,
    ) -> None:
        self.pieces = list(pieces)
        self.fail = fail
        self.hold_after = hold_after
        self.release = asyncio.Event()
        self.closed = asyncio.Event()
        self.calls: list[list[ModelMessage]] = []

    async def stream(
        self,
        messages: Sequence[ModelMessage],
        *,
        model: str | None = None,
        temperature: float | None = None,
    ) -> AsyncIterator[str]:
        self.calls.append(list(messages))
        try:
            for index, piece in enumerate(self.pieces):
                if index == self.hold_after:
                    await self.release.wait()
                yield piece
            if self.hold_after == len(self.pieces):
                await self.release.wait()
            if self.fail is not None:
                raise self.fail
        finally:
            self.closed.set()


class FakeTransport:
    """The socket under a connection: records each frame sent (decoded JSON, in ``sent``) and
    the close (``closed_with``: code and reason). ``fail_sends = True`` makes the peer go."""

    def __init__(self) -> None:
        self.sent: list[dict[str, object]] = []
        self.closed_with: tuple[int, str] | None = None
        self.fail_sends = False
        self._changed = asyncio.Event()

    async def send(self, data: bytes) -> None:
        if self.fail_sends:
            raise ConnectionResetError("peer went away")
        self.sent.append(msgspec.json.decode(data))
        self._changed.set()

    async def close(self, code: int, reason: str) -> None:
        self.closed_with = (code, reason)
        self._changed.set()

    def of_type(self, type_: str) -> list[dict[str, object]]:
        """The frames sent whose ``type`` is ``type_``."""
        return [frame for frame in self.sent if frame.get("type") == type_]

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[dict[str, object]]:
        """Until ``count`` frames in all were sent; AssertionError if the socket is closed
        first or ``timeout`` seconds pass (saying what was sent)."""
        try:
            async with asyncio.timeout(timeout):
                while len(self.sent) < count:
                    if self.closed_with is not None:
                        raise AssertionError(
                            f"closed with {self.closed_with} after {len(self.sent)} of "
                            f"{count} frames: {self.sent}"
                        )
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"{len(self.sent)} of {count} frames after {timeout} s: {self.sent}"
            ) from None
        return self.sent
