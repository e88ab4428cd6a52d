"""One turn: persist the question, stream the flow's answer, persist the answer, tell everyone.

A turn runs as its own asyncio task on the server's loop and does not depend on any socket:
if every connection goes, it finishes and is stored (debug turns are cancelled instead).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import aclosing
from typing import Any

from app.domain import frames, log_context
from app.domain.chat.hub import ChatHub
from app.domain.chats import Category, ChatMessage, MessageStatus, NewMessage
from app.domain.errors import DomainError, InvalidGraph, ModelError, StoreUnavailable
from app.domain.frames import ChatFrame, ErrorCode
from app.domain.graph import CompiledGraph, GraphRuntime, TurnInput
from app.domain.llm import ModelMessage
from app.domain.ports import ChatBus, ChatRepository

logger = logging.getLogger(__name__)

COMPILE_CACHE_SIZE = 256
# A string no answer contains (a NUL), to find where ``message`` sits in an encoded frame.
_SPLICE_MARK = "\x00"
_ENCODED_SPLICE_MARK = frames.encode(_SPLICE_MARK)
_encode_str = frames.ENCODER.encode


def new_turn_id() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


class TurnSpec:
    """What a turn needs to know that does not change while it runs."""

    __slots__ = ("chat_id", "client_msg_id", "flow_id", "graph", "inputs", "text", "user_id")

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
    ) -> None:
        self.flow_id = flow_id
        self.chat_id = chat_id
        self.user_id = user_id
        self.graph = graph
        self.text = text
        self.inputs = inputs
        self.client_msg_id = client_msg_id


class TurnFrames:
    """Encodes the chat frames of one turn: every field present, the same ``turn_id``."""

    __slots__ = ("_stream_template", "chat_id", "flow_id", "turn_id", "user_id")

    def __init__(self, *, flow_id: str, chat_id: str | None, user_id: str, turn_id: str) -> None:
        self.flow_id = flow_id
        self.chat_id = chat_id
        self.user_id = user_id
        self.turn_id = turn_id
        self._stream_template: tuple[bytes, bytes] | None = None

    def frame(
        self,
        type_: str,
        message: str,
        *,
        category: str = Category.ANSWER,
        is_bot: bool = True,
        message_id: int | None = None,
        status: str | None = None,
    ) -> bytes:
        return frames.encode(
            ChatFrame(
                type=type_,
                category=category,
                is_bot=is_bot,
                message=message,
                chat_id=self.chat_id,
                flow_id=self.flow_id,
                user_id=self.user_id,
                turn_id=self.turn_id,
                message_id=message_id,
                status=status,
            )
        )

    def stream(self, piece: str) -> bytes:
        """A ``stream`` frame: only ``message`` differs between them, so the rest is encoded
        once per turn and each piece is spliced in (the per-piece cost of a streamed answer)."""
        if self._stream_template is None:
            template = self.frame("stream", _SPLICE_MARK)
            before, _, after = template.partition(_ENCODED_SPLICE_MARK)
            self._stream_template = (before, after)
        before, after = self._stream_template
        return before + _encode_str(piece) + after

    def begin(self, question: str, question_id: int | None) -> bytes:
        return self.frame(
            "begin", question, category=Category.QUESTION, is_bot=False, message_id=question_id
        )


class Turn:
    __slots__ = (
        "_stop_requested",
        "answer",
        "framer",
        "hub",
        "id",
        "question_id",
        "remote_listeners",
        "spec",
        "task",
    )

    def __init__(self, hub: ChatHub, spec: TurnSpec, turn_id: str | None = None) -> None:
        self.id = turn_id or new_turn_id()
        self.framer = TurnFrames(
            flow_id=spec.flow_id, chat_id=spec.chat_id, user_id=spec.user_id, turn_id=self.id
        )
        self.hub = hub
        self.spec = spec
        self.question_id: int | None = None
        self.answer: list[str] = []
        self.task: asyncio.Task[None] | None = None
        self._stop_requested = False
        # Whether another process has sockets on this chat; the first publish finds out, and a
        # process that joins later says so (``ChatBusListener.on_remote_join``).
        self.remote_listeners = spec.chat_id is not None

    def stop(self) -> None:
        """Cancel the model call; the turn still stores its partial answer as ``stopped``."""
        if self.task is not None and not self._stop_requested:
            self._stop_requested = True
            self.task.cancel()

    def frame(self, type_: str, message: str, **fields: Any) -> bytes:
        return self.framer.frame(type_, message, **fields)

    def begin_frame(self) -> bytes:
        return self.framer.begin(self.spec.text, self.question_id)


class TurnRunner:
    """Starts turns and runs them to their end; one per chat feature."""

    def __init__(
        self,
        *,
        chats: ChatRepository,
        bus: ChatBus,
        runtime: GraphRuntime,
        history_turns: int,
        turn_timeout: float,
        on_finished: Callable[[ChatHub], Awaitable[None]],
    ) -> None:
        self._chats = chats
        self._bus = bus
        self._runtime = runtime
        self._history_turns = history_turns
        self._turn_timeout = turn_timeout
        self._on_finished = on_finished
        self._compile_cache: dict[bytes, CompiledGraph] = {}

    def start(self, hub: ChatHub, spec: TurnSpec, turn_id: str | None = None) -> Turn:
        turn = Turn(hub, spec, turn_id)
        hub.turn = turn
        turn.task = asyncio.get_running_loop().create_task(self._run(turn))
        return turn

    async def _run(self, turn: Turn) -> None:
        hub, spec = turn.hub, turn.spec
        log_context.bind(
            chat_id=spec.chat_id, flow_id=spec.flow_id, user_id=spec.user_id, turn_id=turn.id
        )
        try:
            status, failure = await self._converse(turn)
            answer = "".join(turn.answer)
            if failure is not None:
                await self._emit(turn, frames.error(ErrorCode.TURN_FAILED, failure))
            try:
                answer_id = await self._store_answer(turn, answer, status)
            except StoreUnavailable as exc:
                logger.error("answer of turn %s not stored: %s", turn.id, exc)
                await self._emit(
                    turn, frames.error(ErrorCode.TURN_FAILED, "the answer could not be stored")
                )
                answer_id = None
            await self._emit(turn, turn.frame("end", answer, message_id=answer_id, status=status))
            await self._emit(turn, turn.frame("close", ""))
            logger.info("turn ended %s, %d characters", status, len(answer))
            if hub.debug_memory is not None and status is MessageStatus.COMPLETE:
                hub.debug_memory.append(ModelMessage(role="user", content=spec.text))
                hub.debug_memory.append(ModelMessage(role="assistant", content=answer))
        except asyncio.CancelledError:
            logger.info("turn %s of chat %s cancelled", turn.id, spec.chat_id)
            raise
        except Exception:
            logger.exception("turn %s of chat %s failed", turn.id, spec.chat_id)
        finally:
            hub.turn = None
            if spec.chat_id is not None:
                try:
                    await self._bus.release_turn(spec.chat_id, turn.id)
                except StoreUnavailable as exc:  # the claim's TTL frees the chat in the end
                    logger.error("turn %s of chat %s not released: %s", turn.id, spec.chat_id, exc)
            await self._on_finished(hub)

    async def _converse(self, turn: Turn) -> tuple[MessageStatus, str | None]:
        """Run the flow; the status the answer ends with, and why it failed if it did."""
        hub, spec = turn.hub, turn.spec
        try:
            compiled = self._compiled(spec.graph)
            history = await self._memory(hub, spec) if compiled.reads_history else []
            turn.question_id = await self._store_question(turn)
            await self._emit(turn, turn.begin_frame())
            await self._emit(turn, turn.frame("start", ""))
            turn_input = TurnInput(text=spec.text, inputs=spec.inputs, history=history)
            async with (
                asyncio.timeout(self._turn_timeout),
                aclosing(self._runtime.run(compiled, turn_input)) as pieces,
            ):
                async for piece in pieces:
                    turn.answer.append(piece)
                    await self._emit(turn, turn.framer.stream(piece))
        except asyncio.CancelledError:
            if not turn._stop_requested:
                raise
            # ``stop`` cancelled us on purpose: swallow it and store what was said so far.
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            return MessageStatus.STOPPED, None
        except TimeoutError:
            return MessageStatus.FAILED, f"the turn took longer than {self._turn_timeout:g} s"
        except InvalidGraph as exc:
            return MessageStatus.FAILED, f"the flow's graph is invalid: {exc}"
        except (ModelError, StoreUnavailable) as exc:
            return MessageStatus.FAILED, str(exc)
        except DomainError as exc:
            logger.warning("turn %s failed: %s", turn.id, exc)
            return MessageStatus.FAILED, "the turn failed"
        return MessageStatus.COMPLETE, None

    async def _emit(self, turn: Turn, data: bytes) -> None:
        """One frame to every socket of the chat: here, and in the other processes."""
        await turn.hub.broadcast(data)
        if turn.remote_listeners and turn.spec.chat_id is not None:
            try:
                turn.remote_listeners = await self._bus.publish(turn.spec.chat_id, data)
            except StoreUnavailable as exc:
                logger.warning("turn %s: frames stay in this process: %s", turn.id, exc)
                turn.remote_listeners = False

    def _compiled(self, graph: dict[str, Any]) -> CompiledGraph:
        # Chats of one flow share its graph: compile it once, keyed by its content.
        key = frames.encode(graph)
        compiled = self._compile_cache.get(key)
        if compiled is None:
            compiled = self._runtime.compile(graph)
            if len(self._compile_cache) >= COMPILE_CACHE_SIZE:
                self._compile_cache.pop(next(iter(self._compile_cache)))
            self._compile_cache[key] = compiled
        return compiled

    async def _memory(self, hub: ChatHub, spec: TurnSpec) -> list[ModelMessage]:
        if hub.debug_memory is not None:
            return list(hub.debug_memory)[-2 * self._history_turns :]
        if spec.chat_id is None or self._history_turns <= 0:
            return []
        recent = await self._chats.history(spec.chat_id, None, 2 * self._history_turns)
        return as_memory(list(reversed(recent)))

    async def _store_question(self, turn: Turn) -> int | None:
        return await self._store(turn, Category.QUESTION, turn.spec.text, None)

    async def _store_answer(self, turn: Turn, answer: str, status: MessageStatus) -> int | None:
        # No stored question (debug, or the question could not be stored): nothing to answer.
        if turn.question_id is None:
            return None
        return await self._store(turn, Category.ANSWER, answer, status)

    async def _store(
        self, turn: Turn, category: Category, text: str, status: MessageStatus | None
    ) -> int | None:
        spec = turn.spec
        if spec.chat_id is None:
            return None
        stored = await self._chats.add_message(
            NewMessage(
                chat_id=spec.chat_id,
                flow_id=spec.flow_id,
                user_id=spec.user_id,
                is_bot=category is Category.ANSWER,
                category=category,
                message=text,
                turn_id=turn.id,
                status=status,
                client_msg_id=spec.client_msg_id,
            )
        )
        return stored.id


def as_memory(messages: Sequence[ChatMessage]) -> list[ModelMessage]:
    """Persisted messages, oldest first, as the model's conversation memory."""
    return [
        ModelMessage(role="assistant" if m.is_bot else "user", content=m.message)
        for m in messages
        if m.message
    ]
