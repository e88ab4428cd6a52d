"""A chat's live state in this process: its connections and its running turn."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from app.domain.connection import Connection
from app.domain.llm import ModelMessage

if TYPE_CHECKING:
    from app.domain.chat.turn import Turn


class ChatHub:
    """Keyed by ``chat_id``, or by the connection in debug, where nothing is shared."""

    __slots__ = ("connections", "debug_memory", "key", "turn")

    def __init__(self, key: str, debug: bool) -> None:
        self.key = key
        self.connections: set[Connection] = set()
        self.turn: Turn | None = None
        # Debug turns persist nothing, so their memory lives here, with the connection.
        self.debug_memory: deque[ModelMessage] | None = deque(maxlen=64) if debug else None

    @property
    def idle(self) -> bool:
        return not self.connections and self.turn is None

    async def broadcast(self, data: bytes) -> None:
        """One encoded frame to every connection of the chat (two tabs see the same turn)."""
        for connection in list(self.connections):
            await connection.send(data)
