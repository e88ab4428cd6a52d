"""The live connections of this process: per user (for the connection limit) and in all."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from app.domain.connection import Connection


class ConnectionRegistry:
    def __init__(self) -> None:
        self._connections: set[Connection] = set()
        self._per_user: Counter[str] = Counter()

    def add(self, connection: Connection) -> None:
        self._connections.add(connection)
        self._per_user[connection.user.id] += 1

    def remove(self, connection: Connection) -> None:
        if connection in self._connections:
            self._connections.discard(connection)
            user_id = connection.admission.user.id
            self._per_user[user_id] -= 1
            if self._per_user[user_id] <= 0:
                del self._per_user[user_id]

    def open_connections(self, user_id: str) -> int:
        return self._per_user.get(user_id, 0)

    def __iter__(self) -> Iterator[Connection]:
        return iter(list(self._connections))

    def __len__(self) -> int:
        return len(self._connections)
