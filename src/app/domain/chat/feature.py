"""The ``chat`` feature: runs the flow's graph for each user message (PROTOCOL.md §4–§6)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, ClassVar

from app.domain import frames
from app.domain.chat.hub import ChatHub
from app.domain.chat.turn import TurnFrames, TurnRunner, TurnSpec, new_turn_id
from app.domain.chats import Category, ChatMessage, MessageStatus
from app.domain.connection import Connection
from app.domain.errors import StoreUnavailable
from app.domain.features.base import Feature
from app.domain.frames import (
    ChatRequest,
    ErrorCode,
    HistoryFrame,
    HistoryItem,
    HistoryRequest,
    ResumeRequest,
    StopRequest,
)
from app.domain.graph import GraphRuntime
from app.domain.ports import ChatBus, ChatRepository

logger = logging.getLogger(__name__)

RESUME_LIMIT = 100
#: A claimed turn outlives its time limit by this much before the claim expires on its own.
CLAIM_MARGIN = 30.0
EMPTY_HISTORY = frames.encode(HistoryFrame(messages=[], has_more=False))


class ChatFeature(Feature):
    name = "chat"
    actions: ClassVar = {
        None: ChatRequest,
        "chat": ChatRequest,
        "stop": StopRequest,
        "history": HistoryRequest,
        "resume": ResumeRequest,
    }

    def __init__(
        self,
        *,
        chats: ChatRepository,
        bus: ChatBus,
        runtime: GraphRuntime,
        history_turns: int,
        turn_timeout: float,
        shutdown_grace: float = 10.0,
    ) -> None:
        super().__init__()
        self._chats = chats
        self._bus = bus
        self._turn_timeout = turn_timeout
        self._shutdown_grace = shutdown_grace
        # A chat's hub under its chat id (the string the admission holds: no key of its own),
        # a debug connection's under the connection's id, an int: the two never collide.
        self._hubs: dict[str | int, ChatHub] = {}
        bus.attach(self)
        self._turns = TurnRunner(
            chats=chats,
            bus=bus,
            runtime=runtime,
            history_turns=history_turns,
            turn_timeout=turn_timeout,
            on_finished=self._forget_if_idle,
        )

    # -- connection lifecycle ----------------------------------------------------------------

    async def opened(self, connection: Connection) -> None:
        key = _hub_key(connection)
        hub = self._hubs.get(key)
        joining = hub is None and connection.chat_id is not None
        if hub is None:
            hub = self._hubs[key] = ChatHub(key, debug=connection.chat_id is None)
        # In the hub before any await: a hub without connections may be forgotten meanwhile.
        hub.add(connection)
        if joining and connection.chat_id is not None:
            try:
                await self._bus.join(connection.chat_id)
            except StoreUnavailable as exc:
                logger.error(
                    "chat %s: other processes' frames will not arrive: %s", connection.chat_id, exc
                )

    async def closed(self, connection: Connection) -> None:
        hub = self._hubs.get(_hub_key(connection))
        if hub is None:
            return
        hub.discard(connection)
        # A debug turn has nobody left to watch it and stores nothing: end it.
        if not hub.connections and hub.debug_memory is not None and hub.turn is not None:
            if hub.turn.task is not None:
                hub.turn.task.cancel()
        await self._forget_if_idle(hub)

    async def drain(self, timeout: float) -> None:
        """Running turns get ``timeout`` seconds to finish and be stored, sockets still open."""
        running = self.running_turns()
        if running:
            await asyncio.wait(running, timeout=timeout)

    async def aclose(self) -> None:
        """On shutdown: let running turns finish and be stored for a grace period, then cancel."""
        running = self.running_turns()
        if running:
            _, late = await asyncio.wait(running, timeout=self._shutdown_grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=1)

    def running_turns(self) -> list[asyncio.Task[None]]:
        return [
            hub.turn.task
            for hub in self._hubs.values()
            if hub.turn is not None and hub.turn.task is not None
        ]

    async def _forget_if_idle(self, hub: ChatHub) -> None:
        if hub.idle and self._hubs.get(hub.key) is hub:
            del self._hubs[hub.key]
            if isinstance(hub.key, str):  # a chat's, not a debug connection's
                try:
                    await self._bus.leave(hub.key)
                except StoreUnavailable as exc:
                    logger.warning("chat bus: leaving chat %s failed: %s", hub.key, exc)

    # -- what other processes say (ChatBusListener) ------------------------------------------

    async def on_remote_frame(self, chat_id: str, frame: bytes) -> None:
        hub = self._hubs.get(chat_id)
        if hub is not None:
            await hub.broadcast(frame)

    def on_remote_stop(self, chat_id: str) -> None:
        hub = self._hubs.get(chat_id)
        if hub is not None and hub.turn is not None:
            hub.turn.stop()

    def on_remote_join(self, chat_id: str) -> None:
        hub = self._hubs.get(chat_id)
        if hub is not None and hub.turn is not None:
            hub.turn.remote_listeners = True

    # -- frames ------------------------------------------------------------------------------

    async def handle(self, connection: Connection, request: Any) -> None:
        hub = self._hubs[_hub_key(connection)]
        if isinstance(request, ChatRequest):
            await self._chat(connection, hub, request)
        elif isinstance(request, StopRequest):
            await self._stop(connection, hub)
        elif isinstance(request, HistoryRequest):
            await self._history(connection, request)
        elif isinstance(request, ResumeRequest):
            await self._resume(connection, hub, request)

    async def _chat(self, connection: Connection, hub: ChatHub, request: ChatRequest) -> None:
        if not request.text:
            await connection.send(
                frames.error(ErrorCode.INVALID_MESSAGE, "inputs.input must be a non-empty string")
            )
            return
        if self._joins_running_turn(hub, request) or await self._replayed(connection, request):
            return
        # Checked again after the awaits above: another connection may have started a turn.
        if self._joins_running_turn(hub, request):
            return
        turn_id = new_turn_id()
        try:
            free = hub.turn is None and await self._claim(connection, hub, turn_id)
        except StoreUnavailable as exc:
            logger.error("chat %s: turn not claimed: %s", connection.chat_id, exc)
            await connection.send(frames.error(ErrorCode.TURN_FAILED, "service unavailable"))
            return
        if not free:
            await connection.send(frames.error(ErrorCode.BUSY, "a turn is already running"))
            return
        admission = connection.admission
        self._turns.start(
            hub,
            TurnSpec(
                flow_id=admission.flow.id,
                chat_id=admission.chat_id,
                user_id=connection.user.id,
                graph=admission.graph,
                text=request.text,
                inputs=request.inputs,
                client_msg_id=request.client_msg_id,
            ),
            turn_id,
        )

    async def _claim(self, connection: Connection, hub: ChatHub, turn_id: str) -> bool:
        """Whether this process may run a turn in the chat: no other process runs one."""
        if connection.chat_id is None:
            return True
        claimed = await self._bus.claim_turn(
            connection.chat_id, turn_id, self._turn_timeout + CLAIM_MARGIN
        )
        # Another connection of this process may have started one while we asked.
        if claimed and hub.turn is not None:
            await self._bus.release_turn(connection.chat_id, turn_id)
            return False
        return claimed

    def _joins_running_turn(self, hub: ChatHub, request: ChatRequest) -> bool:
        """A retried message of the running turn: its connection already gets the frames."""
        turn = hub.turn
        return (
            turn is not None
            and request.client_msg_id is not None
            and turn.spec.client_msg_id == request.client_msg_id
        )

    async def _replayed(self, connection: Connection, request: ChatRequest) -> bool:
        """Send a stored turn again if this client message id already started one."""
        chat_id = connection.chat_id
        if chat_id is None or request.client_msg_id is None:
            return False
        try:
            stored = await self._chats.messages_of_turn(chat_id, request.client_msg_id)
            if stored and len(stored) == 1 and await self._bus.turn_running(chat_id):
                return True  # it runs in another process: its frames reach this chat's sockets
        except StoreUnavailable as exc:
            logger.error("chat %s: turn lookup failed: %s", chat_id, exc)
            await connection.send(frames.error(ErrorCode.TURN_FAILED, "service unavailable"))
            return True
        question = next((m for m in stored if m.category == Category.QUESTION), None)
        if question is None:
            return False
        answer = next((m for m in stored if m.category == Category.ANSWER), None)
        for data in _replay(connection, question, answer):
            await connection.send(data)
        return True

    async def _stop(self, connection: Connection, hub: ChatHub) -> None:
        if hub.turn is not None:
            hub.turn.stop()
            return
        chat_id = connection.chat_id
        try:
            if chat_id is not None and await self._bus.turn_running(chat_id):
                await self._bus.request_stop(chat_id)  # the process running it stops it
                return
        except StoreUnavailable as exc:
            logger.error("chat %s: stop not sent: %s", chat_id, exc)
        await connection.send(frames.error(ErrorCode.NOT_RUNNING, "no turn is running"))

    async def _history(self, connection: Connection, request: HistoryRequest) -> None:
        if connection.chat_id is None:
            await connection.send(EMPTY_HISTORY)
            return
        try:
            found = await self._chats.history(
                connection.chat_id, request.before_id, request.limit + 1
            )
        except StoreUnavailable:
            await connection.send(frames.error(ErrorCode.TURN_FAILED, "service unavailable"))
            return
        await connection.send(_history_frame(found, request.limit))

    async def _resume(self, connection: Connection, hub: ChatHub, request: ResumeRequest) -> None:
        if connection.chat_id is None:
            await connection.send(EMPTY_HISTORY)
            return
        try:
            found = await self._chats.after(connection.chat_id, request.after_id, RESUME_LIMIT + 1)
        except StoreUnavailable:
            await connection.send(frames.error(ErrorCode.TURN_FAILED, "service unavailable"))
            return
        await connection.send(_history_frame(found, RESUME_LIMIT))
        turn = hub.turn
        if turn is not None and turn.question_id is not None:
            # The live turn so far, as one piece; its remaining frames follow as they come.
            await connection.send(turn.begin_frame())
            await connection.send(turn.frame("start", ""))
            if turn.answer:
                await connection.send(turn.frame("stream", "".join(turn.answer)))


def _hub_key(connection: Connection) -> str | int:
    chat_id = connection.chat_id
    return chat_id if chat_id is not None else connection.id


def _history_frame(messages: Sequence[ChatMessage], limit: int) -> bytes:
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


def _replay(
    connection: Connection, question: ChatMessage, answer: ChatMessage | None
) -> list[bytes]:
    """A stored turn, again: ``begin``, ``end`` and ``close`` with its own ids and text."""
    turn = TurnFrames(
        flow_id=connection.admission.flow.id,
        chat_id=connection.chat_id,
        user_id=question.user_id,
        turn_id=question.turn_id,
    )
    # No stored answer means the turn's process died before the turn ended.
    if answer is None:
        end = turn.frame("end", "", status=MessageStatus.FAILED)
    else:
        end = turn.frame("end", answer.message, message_id=answer.id, status=answer.status)
    return [turn.begin(question.message, question.id), end, turn.frame("close", "")]
