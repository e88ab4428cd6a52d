"""The live connections of this process (what shutdown closes)."""

from __future__ import annotations

from collections.abc import Iterator

from app.domain.connection import Connection


class ConnectionRegistry:
    def __init__(self) -> None:
        self._connections: set[Connection] = set()

    def add(self, connection: Connection) -> None:
        self._connections.add(connection)

    def remove(self, connection: Connection) -> None:
        self._connections.discard(connection)

    def __iter__(self) -> Iterator[Connection]:
        return iter(list(self._connections))

    def __len__(self) -> int:
        return len(self._connections)
