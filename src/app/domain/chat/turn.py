"""One turn: store the question, stream the flow's answer, store the answer, end.

A turn runs as its own asyncio task and knows nothing of sockets, logs or processes: it reports
each numbered frame, and its start and end, to a :class:`TurnSink` (the chat's room). It does
not depend on any socket: if every connection goes, it finishes and is stored (the room cancels
debug turns instead, which store nothing).

What the end frame says is what is stored: the answer is stored (retried with backoff while the
database is away, :class:`~app.domain.retry.RetryPolicy`) before ``end`` names it; if storing
gives up, ``end`` says ``failed`` and the turn ends with its answer not stored, which the
finaliser stores later (:mod:`app.domain.chat.finaliser`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from contextlib import aclosing
from enum import Enum
from typing import Any, Protocol

from app.domain import frames, log_context
from app.domain.chat.turn_frames import TurnFrames
from app.domain.chats import Category, ChatMessage, MessageStatus, NewMessage, TurnRecord
from app.domain.errors import DomainError, InvalidGraph, ModelError, StoreUnavailable
from app.domain.graph import CompiledGraph, GraphRuntime, TurnInput
from app.domain.llm import ModelMessage
from app.domain.metrics import NO_METRICS, Metrics, TurnReport
from app.domain.ports import ChatRepository
from app.domain.retry import RetryPolicy

logger = logging.getLogger(__name__)

COMPILE_CACHE_SIZE = 256
#: A model that has its pieces at once (a cache, a scripted reply) would stream its whole
#: answer in one step of the event loop, ahead of every other chat's first piece: the turn
#: lets the loop run after its first piece and then after every this many.
PIECES_PER_STEP = 16
NOT_STORED = "the answer could not be stored"


def new_turn_id() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


class TurnSpec:
    """What a turn needs to know that does not change while it runs."""

    __slots__ = (
        "chat_id",
        "client_msg_id",
        "debug_memory",
        "flow_id",
        "graph",
        "inputs",
        "text",
        "user_id",
    )

    def __init__(
        self,
        *,
        flow_id: str,
        chat_id: str | None,
        user_id: str,
        graph: dict[str, Any],
        text: str,
        inputs: dict[str, Any],
        client_msg_id: str | None,
        debug_memory: Sequence[ModelMessage] | None = None,
    ) -> None:
        self.flow_id = flow_id
        self.chat_id = chat_id
        self.user_id = user_id
        self.graph = graph
        self.text = text
        self.inputs = inputs
        self.client_msg_id = client_msg_id
        #: A debug connection's memory (debug turns persist nothing, so it lives with it).
        self.debug_memory = debug_memory


class TurnSink(Protocol):
    """Where a turn reports (its chat's room)."""

    def turn_started(self, turn: Turn) -> None:
        """The question is stored (``turn.question_id``); frames follow."""
        ...

    def turn_frame(self, turn: Turn, seq: int, frame: bytes) -> None: ...

    def turn_ended(self, turn: Turn) -> None:
        """The turn is over: ``turn.begun``, ``turn.status`` and ``turn.answer_stored`` say how."""
        ...


class TurnServices:
    """What every turn of a process shares: the chat store, the runtime, the limits."""

    def __init__(
        self,
        *,
        chats: ChatRepository,
        runtime: GraphRuntime,
        history_turns: int,
        turn_timeout: float,
        store_retry: RetryPolicy,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self.chats = chats
        self.runtime = runtime
        self.history_turns = history_turns
        self.turn_timeout = turn_timeout
        self.store_retry = store_retry
        self.metrics = metrics
        self._compile_cache: dict[bytes, CompiledGraph] = {}

    def compiled(self, graph: dict[str, Any]) -> CompiledGraph:
        # Chats of one flow share its graph: compile it once, keyed by its content.
        key = frames.encode(graph)
        compiled = self._compile_cache.get(key)
        if compiled is None:
            compiled = self.runtime.compile(graph)
            if len(self._compile_cache) >= COMPILE_CACHE_SIZE:
                self._compile_cache.pop(next(iter(self._compile_cache)))
            self._compile_cache[key] = compiled
        return compiled

    async def memory(self, spec: TurnSpec, turn_id: str) -> list[ModelMessage]:
        """The chat's last turns before ``turn_id`` (whose question is stored already)."""
        if spec.debug_memory is not None:
            return list(spec.debug_memory)[-2 * self.history_turns :]
        if spec.chat_id is None or self.history_turns <= 0:
            return []
        recent = await self.chats.history(spec.chat_id, None, 2 * self.history_turns + 1)
        earlier = [m for m in recent if m.turn_id != turn_id][: 2 * self.history_turns]
        return as_memory(list(reversed(earlier)))


class _Ending(Enum):
    """Why the turn's task was cancelled on purpose."""

    STOP = MessageStatus.STOPPED
    INTERRUPT = MessageStatus.INTERRUPTED


class Turn:
    __slots__ = (
        "_ending",
        "_first_piece_at",
        "_model_seconds",
        "_pieces",
        "_streaming",
        "_task",
        "answer",
        "answer_id",
        "answer_stored",
        "begun",
        "failure",
        "framer",
        "holder",
        "id",
        "question_id",
        "services",
        "sink",
        "spec",
        "status",
    )

    def __init__(
        self,
        spec: TurnSpec,
        services: TurnServices,
        sink: TurnSink,
        *,
        turn_id: str | None = None,
        holder: str = "",
    ) -> None:
        self.id = turn_id or new_turn_id()
        self.spec = spec
        self.services = services
        self.sink = sink
        self.holder = holder
        self.framer = TurnFrames(
            flow_id=spec.flow_id, chat_id=spec.chat_id, user_id=spec.user_id, turn_id=self.id
        )
        self.question_id: int | None = None
        self.answer: list[str] = []
        self.answer_id: int | None = None
        self.status: MessageStatus | None = None
        #: Why the turn failed, for people: the ``turn_failed`` frame's message.
        self.failure: str | None = None
        #: Whether its question was stored and its frames began.
        self.begun = False
        self.answer_stored = False
        self._ending: _Ending | None = None
        self._streaming = False
        self._task: asyncio.Task[None] | None = None
        # What the metrics are told at the end (measured once, not per piece).
        self._first_piece_at = 0.0
        self._model_seconds: float | None = None
        self._pieces = 0

    @property
    def text(self) -> str:
        return "".join(self.answer)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    def record(self) -> TurnRecord:
        """What the turn log keeps of this turn (chat turns only)."""
        assert self.spec.chat_id is not None
        return TurnRecord(
            chat_id=self.spec.chat_id,
            turn_id=self.id,
            flow_id=self.spec.flow_id,
            user_id=self.spec.user_id,
            holder=self.holder,
            question_id=self.question_id,
            client_msg_id=self.spec.client_msg_id,
        )

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self._task

    def stop(self) -> None:
        """End the answer now; what was said so far is stored as ``stopped``."""
        self._end_early(_Ending.STOP)

    def interrupt(self) -> None:
        """End the answer now (shutdown past its grace); stored as ``interrupted``."""
        self._end_early(_Ending.INTERRUPT)

    def cancel(self) -> None:
        """Abandon the turn (a debug turn nobody watches any more): nothing is stored."""
        if self._task is not None:
            self._task.cancel()

    def _end_early(self, ending: _Ending) -> None:
        # Only the answer's streaming is cut short; a turn storing its answer finishes that.
        if self._task is not None and self._streaming and self._ending is None:
            self._ending = ending
            self._task.cancel()

    # -- the task --------------------------------------------------------------------------

    async def _run(self) -> None:
        # Every line of the turn carries it (a turn may start from any connection of the chat).
        log_context.bind(
            chat_id=self.spec.chat_id,
            flow_id=self.spec.flow_id,
            user_id=self.spec.user_id,
            turn_id=self.id,
        )
        started = time.monotonic()
        cancelled = False
        try:
            if not await self._store_question():
                return
            self.begun = True
            if self.spec.chat_id is not None:
                self.sink.turn_started(self)
            self._emit(self.framer.begin(self.spec.text, self.question_id))
            self._emit(self.framer.frame("start", ""))
            self.status, self.failure = await self._converse()
            if self.failure is not None:
                self._emit(self.framer.failed(self.failure))
            await self._store_answer()
            self._emit(
                self.framer.frame("end", self.text, message_id=self.answer_id, status=self.status)
            )
            self._emit(self.framer.frame("close", ""))
            logger.info("turn ended %s, %d characters", self.status, len(self.text))
        except asyncio.CancelledError:
            cancelled = True
            logger.info("turn %s of chat %s cancelled", self.id, self.spec.chat_id)
            raise
        except Exception:
            logger.exception("turn %s of chat %s failed", self.id, self.spec.chat_id)
        finally:
            try:
                self.sink.turn_ended(self)
            finally:
                self._report(started, cancelled)

    def _report(self, started: float, cancelled: bool) -> None:
        """The turn's numbers, once, at its end. Without a status it did not begin (its
        question was not stored) or broke: ``failed``; or was abandoned: ``interrupted``."""
        status = self.status or (MessageStatus.INTERRUPTED if cancelled else MessageStatus.FAILED)
        first = self._first_piece_at
        self.services.metrics.turn_ended(
            TurnReport(
                status=status,
                seconds=time.monotonic() - started,
                first_piece=first - started if first else None,
                model_seconds=self._model_seconds,
                pieces=self._pieces,
            )
        )

    async def _store_question(self) -> bool:
        if self.spec.chat_id is None:
            return True
        try:
            stored = await self.services.store_retry.run(
                lambda: self._store(Category.QUESTION, self.spec.text, None),
                f"storing the question of turn {self.id}",
            )
        except StoreUnavailable as exc:
            logger.error("turn %s not started: its question was not stored: %s", self.id, exc)
            self.failure = "service unavailable: the question could not be stored"
            return False
        self.question_id = stored.id
        return True

    async def _converse(self) -> tuple[MessageStatus, str | None]:
        """Run the flow; the status the answer ends with, and why it failed if it did."""
        services, spec = self.services, self.spec
        self._streaming = True
        model_started = 0.0
        try:
            compiled = services.compiled(spec.graph)
            history = await services.memory(spec, self.id) if compiled.reads_history else []
            turn_input = TurnInput(text=spec.text, inputs=spec.inputs, history=history)
            model_started = time.monotonic()
            # The per-piece path: bound once, outside the loop.
            answer, emit, stream = self.answer, self._emit, self.framer.stream
            async with (
                asyncio.timeout(services.turn_timeout),
                aclosing(services.runtime.run(compiled, turn_input)) as pieces,
            ):
                async for piece in pieces:
                    if not answer:  # the only per-piece cost of the metrics: counted at the end
                        self._first_piece_at = time.monotonic()
                    answer.append(piece)
                    emit(stream(piece))
                    if len(answer) % PIECES_PER_STEP == 1:
                        await asyncio.sleep(0)
        except asyncio.CancelledError:
            if self._ending is None:
                raise
            # stop() or interrupt() cancelled us on purpose: store what was said so far.
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            return self._ending.value, None
        except TimeoutError:
            return MessageStatus.FAILED, f"the turn took longer than {services.turn_timeout:g} s"
        except InvalidGraph as exc:
            return MessageStatus.FAILED, f"the flow's graph is invalid: {exc}"
        except ModelError as exc:
            services.metrics.model_failed()
            return MessageStatus.FAILED, str(exc)
        except StoreUnavailable as exc:
            return MessageStatus.FAILED, str(exc)
        except DomainError as exc:
            logger.warning("turn %s failed: %s", self.id, exc)
            return MessageStatus.FAILED, "the turn failed"
        except Exception:  # a node type's bug (extensions' too): the turn still ends, failed
            logger.exception("turn %s failed in its graph", self.id)
            return MessageStatus.FAILED, "the turn failed"
        finally:
            self._streaming = False
            if model_started:
                self._model_seconds = time.monotonic() - model_started
            self._pieces = len(self.answer)
        return MessageStatus.COMPLETE, None

    async def _store_answer(self) -> None:
        if self.spec.chat_id is None or self.question_id is None:
            return  # debug: nothing is stored
        assert self.status is not None
        status = self.status
        try:
            stored = await self.services.store_retry.run(
                lambda: self._store(Category.ANSWER, self.text, status),
                f"storing the answer of turn {self.id}",
            )
        except StoreUnavailable as exc:
            logger.error("answer of turn %s not stored, given up: %s", self.id, exc)
            if self.failure is None:
                self.failure = NOT_STORED
                self._emit(self.framer.failed(NOT_STORED))
            self.status = MessageStatus.FAILED
            return
        # Stored before (a finaliser got there first): what is stored is what end says.
        self.answer_id, self.answer_stored = stored.id, True
        self.status = stored.status or status
        if stored.message != self.text:
            self.answer = [stored.message]

    async def _store(
        self, category: Category, text: str, status: MessageStatus | None
    ) -> ChatMessage:
        spec = self.spec
        assert spec.chat_id is not None
        return await self.services.chats.add_message(
            NewMessage(
                chat_id=spec.chat_id,
                flow_id=spec.flow_id,
                user_id=spec.user_id,
                is_bot=category is Category.ANSWER,
                category=category,
                message=text,
                turn_id=self.id,
                status=status,
                client_msg_id=spec.client_msg_id,
            )
        )

    def _emit(self, frame: bytes) -> None:
        self.sink.turn_frame(self, self.framer.next_seq - 1, frame)


def as_memory(messages: Sequence[ChatMessage]) -> list[ModelMessage]:
    """Persisted messages, oldest first, as the model's conversation memory."""
    return [
        ModelMessage(role="assistant" if m.is_bot else "user", content=m.message)
        for m in messages
        if m.message
    ]
