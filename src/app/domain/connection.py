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
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Coroutine
from typing import Any, Protocol

from app.domain.admission import Admission
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


class Transport(Protocol):
    async def send(self, data: bytes) -> None:
        """Send one text frame (UTF-8 JSON)."""
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
    ) -> None:
        self.id = next(_ids)
        self.admission = admission
        self.user: User = admission.user
        self.transport = transport
        self.locale = locale
        self.closed = False
        #: Set by the room while a ``resume`` answers: the chat's frames are held back (the
        #: resume sends them, in order, from what the room keeps).
        self.holding = False
        #: ``(turn_id, seq)``: frames of that turn up to ``seq`` were sent already (by a resume).
        self.watermark: tuple[str, int] | None = None
        self._limit = send_buffer
        self._queue: deque[bytes] | None = None
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
        self._queue = deque()  # busy: what is offered meanwhile waits behind this frame
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
            try:
                await asyncio.wait_for(asyncio.shield(writer), CLOSE_TIMEOUT)
            except Exception:  # too slow or broken: close without the rest
                writer.cancel()
        await self._close_transport(rejection)

    # -- internals -------------------------------------------------------------------------

    def _start_writer(self) -> None:
        self._writer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        queue = self._queue
        try:
            while queue:
                data = queue.popleft()
                self._queued -= len(data)
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
            await asyncio.wait_for(
                self.transport.close(rejection.code, rejection.reason(self.locale)), timeout
            )
        except Exception:  # closed by the peer already, or it reads nothing: nothing to tell
            pass


# Keeps one-shot tasks referenced until they finish (asyncio holds only weak references).
_background: set[asyncio.Task[None]] = set()


def _in_background(coroutine: Coroutine[Any, Any, None]) -> None:
    task = asyncio.get_running_loop().create_task(coroutine)
    _background.add(task)
    task.add_done_callback(_background.discard)
