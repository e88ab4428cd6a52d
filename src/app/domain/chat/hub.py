"""A chat's live state in this process: its connections and its running turn."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from app.domain.connection import Connection
from app.domain.llm import ModelMessage

if TYPE_CHECKING:
    from app.domain.chat.turn import Turn


class ChatHub:
    """Keyed by ``chat_id``, or by the connection's id in debug, where nothing is shared.

    Almost every chat has one connection: it is held as is, and a set is made only while
    there are more (a set per idle socket would cost more than the hub itself).
    """

    __slots__ = ("_connections", "debug_memory", "key", "turn")

    def __init__(self, key: str | int, debug: bool) -> None:
        self.key = key
        self._connections: Connection | set[Connection] | None = None
        self.turn: Turn | None = None
        # Debug turns persist nothing, so their memory lives here, with the connection.
        self.debug_memory: deque[ModelMessage] | None = deque(maxlen=64) if debug else None

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

    @property
    def idle(self) -> bool:
        return self._connections is None and self.turn is None

    async def broadcast(self, data: bytes) -> None:
        """One encoded frame to every connection of the chat (two tabs see the same turn)."""
        for connection in self.connections:
            await connection.send(data)
