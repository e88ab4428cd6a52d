"""One admitted WebSocket, as the domain sees it: who is on it and how to write to it.

The API layer supplies a :class:`Transport`; everything that writes to the socket goes through
:meth:`Connection.send`, whose lock makes it the socket's single writer even when a turn task
and the receive loop answer at the same time.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Protocol

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
    __slots__ = ("_lock", "admission", "closed", "id", "locale", "transport", "user")

    def __init__(self, admission: Admission, transport: Transport, locale: str = "en") -> None:
        self.id = next(_ids)
        self.admission = admission
        self.user: User = admission.user
        self.transport = transport
        self.locale = locale
        self.closed = False
        self._lock = asyncio.Lock()

    @property
    def chat_id(self) -> str | None:
        return self.admission.chat_id

    async def send(self, data: bytes) -> bool:
        """Write one frame; False (and the connection marked closed) if the socket is gone."""
        if self.closed:
            return False
        async with self._lock:
            try:
                await self.transport.send(data)
            except Exception:  # the peer went away: any transport error means the same here
                self.closed = True
                return False
        return True

    async def close(self, rejection: Rejection) -> None:
        if self.closed:
            return
        self.closed = True
        async with self._lock:
            try:
                await self.transport.close(rejection.code, rejection.reason(self.locale))
            except Exception:  # already closed by the peer: nothing left to tell it
                pass
