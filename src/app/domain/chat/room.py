"""A chat's life in this process: the one object that owns it (what bisheng's ChatManager did).

A room holds the chat's connections here, the turn it runs here (if any) under the chat's
lease, and its feed of the chat's current turn wherever it runs (:mod:`.turn_feed`: every
frame in order, by position, from the turn itself or from the other processes and the turn
log). It answers the chat's frames (``chat``, ``stop``, ``history``, ``resume``)
and gives each connection every frame of the chat's turns once, in order, through the
connection's own bounded queue, so that no socket slows a turn.

A debug connection (no ``chat_id``) has a room of its own that shares nothing: no lease, no
log, nothing stored, its memory kept here.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from app.domain import frames
from app.domain.chat.finaliser import TurnFinaliser
from app.domain.chat.history import (
    EMPTY_HISTORY,
    RESUME_LIMIT,
    history_frame,
    replay,
)
from app.domain.chat.lease_keeper import LeaseKeeper
from app.domain.chat.recovery import Recovery
from app.domain.chat.turn import Turn, TurnServices, TurnSpec, new_turn_id
from app.domain.chat.turn_feed import TurnFeed
from app.domain.chats import Category, ChatMessage, MessageStatus, TurnState
from app.domain.connection import Connection
from app.domain.errors import StoreUnavailable
from app.domain.frames import (
    ChatRequest,
    ErrorCode,
    HistoryRequest,
    ResumeRequest,
)
from app.domain.llm import ModelMessage
from app.domain.ports import ChatRepository, TurnControl, TurnLog

logger = logging.getLogger(__name__)

DEBUG_MEMORY = 64
_EVERYTHING = 1 << 62

LOST = frames.error(
    ErrorCode.RESUME_UNAVAILABLE,
    "frames of this chat's turn were lost before they reached this connection: read history",
)


@dataclass
class RoomServices:
    """What every room of a process shares."""

    chats: ChatRepository
    log: TurnLog
    control: TurnControl
    keeper: LeaseKeeper
    recovery: Recovery
    finaliser: TurnFinaliser
    turns: TurnServices
    process_id: str
    #: Called when a room has no connection and no turn left: the registry forgets it.
    on_idle: Callable[[ChatRoom], None]


class ChatRoom:
    """Keyed by ``chat_id``, or by the connection's id in debug, where nothing is shared.

    Almost every chat has one connection: it is held as is, and a set is made only while there
    are more (a set per idle socket would cost more than the room itself).
    """

    __slots__ = (
        "_asker",
        "_connections",
        "_services",
        "chat_id",
        "feed",
        "key",
        "memory",
        "turn",
    )

    def __init__(self, key: str | int, chat_id: str | None, services: RoomServices) -> None:
        self.key = key
        self.chat_id = chat_id
        self._services = services
        self._connections: Connection | set[Connection] | None = None
        #: The turn this process runs in the chat, if any.
        self.turn: Turn | None = None
        #: The chat's current turn, wherever it runs (its frames in order).
        self.feed = TurnFeed(chat_id, services.log, self)
        #: Debug turns persist nothing, so their memory lives here, with the connection.
        self.memory: deque[ModelMessage] | None = (
            deque(maxlen=DEBUG_MEMORY) if chat_id is None else None
        )
        self._asker: Connection | None = None

    @property
    def debug(self) -> bool:
        return self.chat_id is None

    # -- connections -----------------------------------------------------------------------

    @property
    def connections(self) -> tuple[Connection, ...]:
        held = self._connections
        if held is None:
            return ()
        if isinstance(held, Connection):
            return (held,)
        return tuple(held)

    def add(self, connection: Connection) -> None:
        held = self._connections
        if held is None or held is connection:
            self._connections = connection
        elif isinstance(held, Connection):
            self._connections = {held, connection}
        else:
            held.add(connection)

    def discard(self, connection: Connection) -> None:
        held = self._connections
        if held is connection:
            self._connections = None
        elif isinstance(held, set):
            held.discard(connection)
            if len(held) == 1:
                self._connections = next(iter(held))
        # A debug turn has nobody left to watch it and stores nothing: end it.
        if self.debug and self._connections is None and self.turn is not None:
            self.turn.cancel()
        self._forget_if_idle()

    @property
    def idle(self) -> bool:
        return self._connections is None and self.turn is None and not self.feed.reading

    # -- chat --------------------------------------------------------------------------------

    async def chat(self, connection: Connection, request: ChatRequest) -> None:
        if not request.text:
            await connection.send(
                frames.error(ErrorCode.INVALID_MESSAGE, "inputs.input must be a non-empty string")
            )
            return
        if self._joins_running_turn(request):
            return
        if self.turn is not None:
            await connection.send(frames.error(ErrorCode.BUSY, "a turn is already running"))
            return
        try:
            if await self._replayed(connection, request):
                return
            # Checked again after the awaits above: another connection may have started one.
            if self._joins_running_turn(request):
                return
            turn_id = new_turn_id()
            holder = f"{self._services.process_id}/{turn_id}"
            if not await self._claim(holder):
                await connection.send(frames.error(ErrorCode.BUSY, "a turn is already running"))
                return
        except StoreUnavailable as exc:
            logger.error("chat %s: turn not started: %s", self.chat_id, exc)
            await connection.send(frames.error(ErrorCode.TURN_FAILED, "service unavailable"))
            return
        admission = connection.admission
        spec = TurnSpec(
            flow_id=admission.flow.id,
            chat_id=self.chat_id,
            user_id=connection.user.id,
            graph=admission.graph,
            text=request.text,
            inputs=request.inputs,
            client_msg_id=request.client_msg_id,
            debug_memory=self.memory,
        )
        turn = Turn(spec, self._services.turns, self, turn_id=turn_id, holder=holder)
        self.turn, self._asker = turn, connection
        self.feed.begin_local(turn_id)
        turn.start()

    async def _claim(self, holder: str) -> bool:
        """Take the chat's lease for a new turn, after finishing the last one if it was left
        unfinished (so the history stays in order); False if a turn holds the chat."""
        if self.debug:
            return self.turn is None
        chat_id = self.chat_id
        assert chat_id is not None
        keeper = self._services.keeper
        if not await keeper.acquire(chat_id, holder):
            return False
        if self.turn is not None:  # another connection of this room won meanwhile
            keeper.release(chat_id, holder)
            return False
        try:
            last = await self._services.log.current(chat_id)
            if last is not None and not last.finished:
                await self._services.finaliser.finalise(last)
        except StoreUnavailable:
            keeper.release(chat_id, holder)
            raise
        return True

    def _joins_running_turn(self, request: ChatRequest) -> bool:
        """A retried message of the running turn: its connection already gets the frames."""
        turn = self.turn
        return (
            turn is not None
            and request.client_msg_id is not None
            and turn.spec.client_msg_id == request.client_msg_id
        )

    async def _replayed(self, connection: Connection, request: ChatRequest) -> bool:
        """Send a stored turn again if this client message id already started one."""
        chat_id = self.chat_id
        if chat_id is None or request.client_msg_id is None:
            return False
        stored = await self._services.chats.messages_of_turn(chat_id, request.client_msg_id)
        question = next((m for m in stored if m.category == Category.QUESTION), None)
        if question is None:
            return False
        answer = next((m for m in stored if m.category == Category.ANSWER), None)
        if answer is None:
            view = self.feed.view
            if view is not None and view.turn_id == question.turn_id and not view.ended:
                return True  # it runs elsewhere: its frames reach this chat's sockets
            answer = await self._finish_orphan(question)
            if answer is None:
                return True  # it runs in another process, which will end it
        for data in replay(connection.admission.flow.id, chat_id, question, answer):
            await connection.send(data)
        return True

    async def _finish_orphan(self, question: ChatMessage) -> ChatMessage | None:
        """The answer of a turn whose question is stored, finished now if nobody runs it."""
        services, chat_id = self._services, question.chat_id
        holder = await services.recovery.holder_of(chat_id)
        if holder is not None and holder.endswith(f"/{question.turn_id}"):
            return None
        record = await services.log.current(chat_id)
        if record is None or record.turn_id != question.turn_id:
            record = None
        await services.recovery.finish_question(question, record)
        stored = await services.chats.messages_of_turn(chat_id, question.client_msg_id or "")
        return next((m for m in stored if m.category == Category.ANSWER), None)

    # -- stop, history ---------------------------------------------------------------------

    async def stop(self, connection: Connection) -> None:
        if self.turn is not None:
            self.turn.stop()
            return
        chat_id = self.chat_id
        if chat_id is not None:
            try:
                view = self.feed.view
                if (view is not None and not view.ended) or (
                    await self._services.recovery.holder_of(chat_id) is not None
                ):
                    await self._services.control.request_stop(chat_id)
                    return
            except StoreUnavailable as exc:
                logger.error("chat %s: stop not sent: %s", chat_id, exc)
        await connection.send(frames.error(ErrorCode.NOT_RUNNING, "no turn is running"))

    def on_stop(self) -> None:
        """Another process asked to stop the chat's turn."""
        if self.turn is not None:
            self.turn.stop()

    async def history(self, connection: Connection, request: HistoryRequest) -> None:
        if self.chat_id is None:
            await connection.send(EMPTY_HISTORY)
            return
        try:
            found = await self._services.chats.history(
                self.chat_id, request.before_id, request.limit + 1
            )
        except StoreUnavailable:
            await connection.send(frames.error(ErrorCode.TURN_FAILED, "service unavailable"))
            return
        await connection.send(history_frame(found, request.limit))

    # -- resume ------------------------------------------------------------------------------

    async def resume(self, connection: Connection, request: ResumeRequest) -> None:
        """Exactly what the client has not seen: the messages stored after ``after_id``, then
        the frames of ``turn_id`` after ``after_seq``, then (if another turn runs) that turn's
        frames from ``begin``; the rest follows live. ``resume_unavailable`` if the turn log
        no longer holds what was asked."""
        connection.holding = True  # the chat's frames wait: they are sent below, in order
        try:
            await self._resume(connection, request)
        finally:
            connection.holding = False

    async def _resume(self, connection: Connection, request: ResumeRequest) -> None:
        messages: list[ChatMessage] = []
        if self.chat_id is not None:
            try:
                messages = list(
                    await self._services.chats.after(
                        self.chat_id, request.after_id, RESUME_LIMIT + 1
                    )
                )
                await self.feed.catch_up()
            except StoreUnavailable:
                await connection.send(frames.error(ErrorCode.TURN_FAILED, "service unavailable"))
                return
        streams: list[tuple[str, list[bytes], int]] = []
        if request.turn_id is not None:
            after = request.after_seq if request.after_seq is not None else -1
            rest = await self.feed.frames_after(request.turn_id, after)
            if rest is None:
                connection.offer(
                    frames.error(
                        ErrorCode.RESUME_UNAVAILABLE,
                        f"the turn log no longer holds turn {request.turn_id} after "
                        f"seq {after}: read history",
                    )
                )
                return
            streams.append((request.turn_id, rest, after + len(rest)))
        view = self.feed.view
        if view is not None and not view.ended and view.turn_id != request.turn_id:
            live = view.after(-1)
            if live is None:
                connection.offer(LOST)
                return
            streams.append((view.turn_id, live, len(live) - 1))
        shown = {turn_id for turn_id, _, _ in streams}
        history = [m for m in messages if m.turn_id not in shown]
        has_more = len(history) > RESUME_LIMIT
        connection.offer(
            EMPTY_HISTORY if self.chat_id is None else history_frame(history, RESUME_LIMIT)
        )
        if has_more:
            # The client resumes again from the last message; the turns' frames come then.
            if view is not None and not view.ended:
                connection.watermark = (view.turn_id, _EVERYTHING)
            return
        for turn_id, rest, last_seq in streams:
            for frame in rest:
                connection.offer(frame)
            connection.watermark = (turn_id, last_seq)

    # -- frames of this process's turn (TurnSink) ------------------------------------------

    def turn_started(self, turn: Turn) -> None:
        self._services.log.start(turn.record())

    def turn_frame(self, turn: Turn, seq: int, frame: bytes) -> None:
        view = self.feed.view
        if view is not None and view.turn_id == turn.id:
            view.accept_own(seq, frame)
        self._broadcast(turn.id, seq, frame)
        if self.chat_id is not None:
            self._services.log.append(self.chat_id, turn.id, seq, frame)

    def turn_ended(self, turn: Turn) -> None:
        if self.turn is turn:
            self.turn = None
        asker, self._asker = self._asker, None
        services, chat_id = self._services, self.chat_id
        if chat_id is None:
            if turn.status is MessageStatus.COMPLETE and self.memory is not None:
                self.memory.append(ModelMessage(role="user", content=turn.spec.text))
                self.memory.append(ModelMessage(role="assistant", content=turn.text))
        elif not turn.begun:
            if asker is not None and turn.failure is not None:
                asker.offer(frames.error(ErrorCode.TURN_FAILED, turn.failure))
            services.keeper.release(chat_id, turn.holder)
        else:
            ended = msgspec.structs.replace(
                turn.record(), state=TurnState.ENDED, answer_stored=turn.answer_stored
            )
            services.log.end(ended)
            if turn.answer_stored:
                services.keeper.release(chat_id, turn.holder)
            else:
                # Cancelled, or its answer could not be stored: the lease lapses and the
                # turn is finished by whoever holds the chat next (its log has the text).
                services.keeper.abandon(chat_id, turn.holder)
        self._forget_if_idle()

    # -- frames of other processes ---------------------------------------------------------

    def on_remote(self, turn_id: str, first_seq: int, batch: list[bytes]) -> None:
        """Frames published by another process (or this process's finaliser)."""
        if self.turn is not None and self.turn.id == turn_id:
            return  # this process's own turn: it has every frame already
        self.feed.on_remote(turn_id, first_seq, batch)

    def resync(self) -> None:
        """The fan-out reconnected: what it missed is in the log."""
        if self.turn is None:
            self.feed.resync()

    # -- what the feed asks of its room (FeedOwner) ------------------------------------------

    @property
    def runs_turn(self) -> bool:
        return self.turn is not None

    def deliver(self, turn_id: str, seq: int, frame: bytes) -> None:
        self._broadcast(turn_id, seq, frame)

    def frames_lost(self) -> None:
        for connection in self.connections:
            connection.offer(LOST)

    def feed_settled(self) -> None:
        self._forget_if_idle()

    def _broadcast(self, turn_id: str, seq: int, frame: bytes) -> None:
        """One frame to every connection of the chat here (two tabs see the same turn)."""
        held = self._connections
        if held is None:
            return
        # Per frame, so no tuple is made for the usual chat of one connection.
        for connection in (held,) if isinstance(held, Connection) else tuple(held):
            if connection.holding:
                continue
            mark = connection.watermark
            if mark is not None:
                if mark[0] == turn_id and seq <= mark[1]:
                    continue
                if mark[0] != turn_id:
                    connection.watermark = None
            connection.offer(frame)

    def _forget_if_idle(self) -> None:
        if self.idle:
            self._services.on_idle(self)
