"""One admitted WebSocket, as the domain sees it: who is on it and how to write to it.

The API layer supplies a :class:`Transport`; everything that writes to the socket goes through
:meth:`Connection.send` (or :meth:`Connection.close`), which makes it the socket's single writer
even when a turn task and the receive loop answer at the same time.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from app.domain.admission import Admission
from app.domain.rejections import Rejection
from app.domain.users import User

_ids = itertools.count(1)


class Transport(Protocol):
    async def send(self, data: bytes) -> None:
        """Send one text frame (UTF-8 JSON)."""
        ...

    async def close(self, code: int, reason: str) -> None: ...


class Connection:
    """An admitted socket. Writes never interleave: one at a time, the others wait their turn.

    An uncontended write only sets a flag. The lock that queues writers is made when a second
    write starts while one is in flight (then taken on behalf of that one, which releases it
    when done), so an idle connection holds no lock.
    """

    __slots__ = ("_lock", "_writing", "admission", "closed", "id", "locale", "transport", "user")

    def __init__(self, admission: Admission, transport: Transport, locale: str = "en") -> None:
        self.id = next(_ids)
        self.admission = admission
        self.user: User = admission.user
        self.transport = transport
        self.locale = locale
        self.closed = False
        self._writing = False
        self._lock: asyncio.Lock | None = None

    @property
    def chat_id(self) -> str | None:
        return self.admission.chat_id

    async def send(self, data: bytes) -> bool:
        """Write one frame; False (and the connection marked closed) if the socket is gone."""
        if self.closed:
            return False
        try:
            await self._write(self.transport.send, data)
        except Exception:  # the peer went away: any transport error means the same here
            self.closed = True
            return False
        return True

    async def close(self, rejection: Rejection) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            await self._write(self.transport.close, rejection.code, rejection.reason(self.locale))
        except Exception:  # already closed by the peer: nothing left to tell it
            pass

    async def _write(self, write: Callable[..., Awaitable[None]], *args: Any) -> None:
        lock = self._lock
        if lock is None:
            if not self._writing:
                self._writing = True
                try:
                    await write(*args)
                finally:
                    self._writing = False
                    if self._lock is not None:
                        # Taken for this write by the one that came during it: pass it on.
                        self._lock.release()
                return
            # A lock-free write is in flight: take a new lock on its behalf (it is free, so
            # this does not wait), then queue behind it like any later writer.
            lock = self._lock = asyncio.Lock()
            await lock.acquire()
        async with lock:
            await write(*args)
