"""One admitted WebSocket, as the domain sees it: who is on it and how frames reach it.

The API layer supplies a :class:`Transport`. Everything written to the socket goes through the
connection, which is the socket's single writer and its send policy:

- :meth:`Connection.send` (a reply to the client's own frame) writes at once when nothing is
  waiting, and otherwise queues behind what is;
- :meth:`Connection.offer` (a chat's frames, fanned out by its room) never waits: the frame is
  queued and a writer task, made only while frames wait, writes them in order. A turn is never
  slowed by a socket.
- What waits is bounded (``send_buffer`` bytes): a client that falls that far behind is closed
  with 4008 ``slow consumer``; it reconnects and resumes. Only a client that holds the writer
  up counts as behind: frames a turn produced faster than the loop ran the writer (a burst)
  are the turn's pace, not the client's.
- While the client holds the writer up (its send did not complete at once), a ``stream``
  frame offered right behind a waiting ``stream`` frame of the same turn, at the next
  position, is joined into it: one frame with the pieces' text concatenated, ``first_seq``
  its first position and ``seq`` its last (PROTOCOL.md §5.1). So a slow socket costs fewer
  frames, not more. Nothing else is joined: not across turns, not over a gap, not with any
  other frame, and never while the socket keeps up (every piece is its own frame then).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Coroutine
from typing import Any, Protocol

import msgspec

from app.domain.admission import Admission
from app.domain.frames import ENCODER, ChatFrame
from app.domain.metrics import NO_METRICS, Limit, Metrics
from app.domain.rejections import Rejection
from app.domain.users import User

logger = logging.getLogger(__name__)
_ids = itertools.count(1)
#: Seconds a close may take to be written (a peer that reads nothing never drains its socket).
CLOSE_TIMEOUT = 5.0
#: A slow consumer's close waits behind what its socket still holds, for as long as a client
#: that reads at all needs; one that reads nothing is ended by the server's heartbeat first.
SLOW_CLOSE_TIMEOUT = 120.0
DEFAULT_SEND_BUFFER = 1 << 20
#: The queue while :meth:`Connection.send` writes with nothing behind it: a reply to the
#: client's own frame, the common case, then costs no ``deque`` (~1,000 instructions a frame).
_WRITING = ()
#: How every ``stream`` frame begins (``type`` is a chat frame's first field, see ChatFrame).
_STREAM = b'{"type":"stream"'
_decode_chat_frame = msgspec.json.Decoder(ChatFrame).decode
_FIRST_SEQ_FIELD = len(b',"first_seq":')


class Transport(Protocol):
    def send(self, data: bytes) -> Awaitable[None]:
        """Send one text frame (UTF-8 JSON). An ``async def`` serves; so does a plain method
        that returns the server's own awaitable (a coroutine layer less on every frame)."""
        ...

    async def close(self, code: int, reason: str) -> None: ...


class Connection:
    """An admitted socket. Writes never interleave.

    An idle connection holds no queue and no task: ``_queue`` is made when a write starts and
    dropped when nothing waits any more.
    """

    __slots__ = (
        "_limit",
        "_queue",
        "_queued",
        "_sending",
        "_writer",
        "admission",
        "closed",
        "holding",
        "id",
        "locale",
        "metrics",
        "transport",
        "user",
        "watermark",
    )

    def __init__(
        self,
        admission: Admission,
        transport: Transport,
        locale: str = "en",
        send_buffer: int = DEFAULT_SEND_BUFFER,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self.id = next(_ids)
        self.admission = admission
        self.user: User = admission.user
        self.transport = transport
        self.locale = locale
        #: Where the socket's limits report (shared by every connection of the process).
        self.metrics = metrics
        self.closed = False
        #: Set by the room while a ``resume`` answers: the chat's frames are held back (the
        #: resume sends them, in order, from what the room keeps).
        self.holding = False
        #: ``(turn_id, seq)``: frames of that turn up to ``seq`` were sent already (by a resume).
        self.watermark: tuple[str, int] | None = None
        self._limit = send_buffer
        #: None: idle. ``_WRITING``: :meth:`send` writes and nothing waits. Else what waits.
        self._queue: deque[bytes | _Joined] | tuple[()] | None = None
        self._queued = 0
        #: The writer is inside a send that did not complete at once (the socket pushes back).
        self._sending = False
        self._writer: asyncio.Task[None] | None = None

    @property
    def chat_id(self) -> str | None:
        return self.admission.chat_id

    @property
    def busy(self) -> bool:
        """Whether frames are being written or wait to be."""
        return self._queue is not None

    async def send(self, data: bytes) -> bool:
        """Write one frame, after what already waits; False if the socket is gone."""
        if self.closed:
            return False
        if self._queue is not None:
            self.offer(data)
            return not self.closed
        self._queue = _WRITING  # busy: what is offered meanwhile waits behind this frame
        try:
            await self.transport.send(data)
        except Exception:  # the peer went away: any transport error means the same here
            self._gone()
            return False
        if self._queue:
            self._start_writer()
        else:
            self._queue = None
        return True

    def offer(self, data: bytes) -> None:
        """Queue one frame for the socket without waiting (see the module's docstring)."""
        if self.closed:
            return
        queue = self._queue
        if queue is None:
            self._queue = deque((data,))
            self._queued = len(data)
            self._start_writer()
            return
        if isinstance(queue, tuple):  # behind the frame that send() writes
            self._queue = queue = deque()
        if not (self._sending and data.startswith(_STREAM) and self._joined(queue, data)):
            queue.append(data)
            self._queued += len(data)
        if self._queued > self._limit and self._sending:
            self._fell_behind()

    async def close(self, rejection: Rejection) -> None:
        """Close after the frames already waiting are written (within a bound)."""
        if self.closed:
            return
        self.closed = True
        writer = self._writer
        if writer is not None:
            # asyncio.timeout, not wait_for: in Python 3.11 wait_for makes a task per call.
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await asyncio.shield(writer)
            except Exception:  # too slow or broken: close without the rest
                writer.cancel()
        await self._close_transport(rejection)

    # -- internals -------------------------------------------------------------------------

    def _joined(self, queue: deque[bytes | _Joined], data: bytes) -> bool:
        """Join the stream frame ``data`` into the last waiting frame if that is a stream frame
        of the same turn at the position before it (the only case where joining keeps the
        text exact and in order); False, and nothing changed, otherwise. The decoding here
        costs only while a socket pushes back, and saves a send each time."""
        if not queue:
            return False
        last = queue[-1]
        if isinstance(last, bytes):
            if not last.startswith(_STREAM):
                return False
            joined = _Joined(_decode_chat_frame(last), len(last))
        else:
            joined = last
        grown = joined.join(_decode_chat_frame(data))
        if grown is None:
            return False
        queue[-1] = joined
        self._queued += grown
        return True

    def _start_writer(self) -> None:
        self._writer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        queue = self._queue
        try:
            while queue:
                item = queue.popleft()
                if isinstance(item, bytes):
                    data = item
                    self._queued -= len(data)
                else:  # joined pieces: encoded once, now that nothing more can join them
                    data = item.encode()
                    self._queued -= item.size
                self._sending = True
                await self.transport.send(data)
                self._sending = False
        except asyncio.CancelledError:
            raise
        except Exception:  # the peer went away
            self._gone()
        finally:
            self._sending = False
            if self._queue is queue and not queue:
                self._queue = None
            self._writer = None

    def _gone(self) -> None:
        self.closed = True
        self._queue = None
        self._queued = 0

    def _fell_behind(self) -> None:
        self.metrics.limit_reached(Limit.SLOW_CONSUMER)
        logger.warning(
            "connection %s fell %d bytes behind its chat's frames: closing 4008",
            self.id,
            self._queued,
        )
        writer = self._writer
        self._gone()
        if writer is not None:
            writer.cancel()
        _in_background(self._close_transport(Rejection.SLOW_CONSUMER, SLOW_CLOSE_TIMEOUT))

    async def _close_transport(self, rejection: Rejection, timeout: float = CLOSE_TIMEOUT) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self.transport.close(rejection.code, rejection.reason(self.locale))
        except Exception:  # closed by the peer already, or it reads nothing: nothing to tell
            pass


class _Joined:
    """``stream`` frames of one turn waiting as one: the first frame (every field but
    ``message`` and ``seq`` is the same on every stream frame of a turn), the pieces' text,
    the last position, and the size of the frame they make (what the send buffer counts)."""

    __slots__ = ("first", "last_seq", "pieces", "size")

    def __init__(self, first: ChatFrame, size: int) -> None:
        self.first = first
        self.pieces = [first.message]
        self.last_seq = first.seq if first.first_seq is None else None
        self.size = size

    def join(self, frame: ChatFrame) -> int | None:
        """Take the next piece: how many bytes the joined frame grew by; None if ``frame`` is
        not the stream frame at the next position of the same turn."""
        last = self.last_seq
        if (
            last is None
            or frame.seq != last + 1
            or frame.type != "stream"
            or frame.first_seq is not None
            or frame.turn_id != self.first.turn_id
        ):
            return None
        self.pieces.append(frame.message)
        self.last_seq = frame.seq
        # Exact, without encoding the frame again: JSON escapes character by character, so the
        # joined text's encoding is the pieces' encodings without their quotes, side by side.
        grown = len(ENCODER.encode(frame.message)) - 2 + len(str(frame.seq)) - len(str(last))
        if len(self.pieces) == 2:  # the first join adds the field ``first_seq``
            grown += _FIRST_SEQ_FIELD + len(str(self.first.seq))
        self.size += grown
        return grown

    def encode(self) -> bytes:
        return ENCODER.encode(
            msgspec.structs.replace(
                self.first,
                message="".join(self.pieces),
                seq=self.last_seq,
                first_seq=self.first.seq,
            )
        )


# Keeps one-shot tasks referenced until they finish (asyncio holds only weak references).
_background: set[asyncio.Task[None]] = set()


def _in_background(coroutine: Coroutine[Any, Any, None]) -> None:
    task = asyncio.get_running_loop().create_task(coroutine)
    _background.add(task)
    task.add_done_callback(_background.discard)
