"""The ``chat`` feature: runs the flow's graph for each user message (PROTOCOL.md §4–§6).

Thin: each frame goes to the connection's room (:mod:`app.domain.chat.room`), which owns the
chat's life.
"""

from __future__ import annotations

from typing import Any, ClassVar

from app.domain.chat.rooms import ChatRooms
from app.domain.connection import Connection
from app.domain.features.base import Feature
from app.domain.frames import ChatRequest, HistoryRequest, ResumeRequest, StopRequest


class ChatFeature(Feature):
    name = "chat"
    actions: ClassVar = {
        None: ChatRequest,
        "chat": ChatRequest,
        "stop": StopRequest,
        "history": HistoryRequest,
        "resume": ResumeRequest,
    }

    def __init__(self, rooms: ChatRooms, shutdown_grace: float = 10.0) -> None:
        super().__init__()
        self.rooms = rooms
        self._shutdown_grace = shutdown_grace

    async def opened(self, connection: Connection) -> None:
        await self.rooms.join(connection)

    async def closed(self, connection: Connection) -> None:
        self.rooms.leave(connection)

    async def drain(self, timeout: float) -> None:
        await self.rooms.drain(timeout)

    async def aclose(self) -> None:
        await self.rooms.aclose(self._shutdown_grace)

    async def handle(self, connection: Connection, request: Any) -> None:
        room = self.rooms.room_of(connection)
        if isinstance(request, ChatRequest):
            await room.chat(connection, request)
        elif isinstance(request, StopRequest):
            await room.stop(connection)
        elif isinstance(request, HistoryRequest):
            await room.history(connection, request)
        elif isinstance(request, ResumeRequest):
            await room.resume(connection, request)
