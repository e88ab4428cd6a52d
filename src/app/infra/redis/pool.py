"""The connection pool of flowgate's single-server Redis client: redis-py's
:class:`~redis.asyncio.BlockingConnectionPool`, with a checkout and a return that cost nothing
while a connection is idle and nobody waits for one.

Blocking, because past its size a command must wait for a connection rather than fail (the
plain pool raises at its limit: a burst of turns became refused turns). But redis-py's blocking
checkout takes a condition, its lock and a timeout, and records observability events, for every
command, and its return takes the condition again: 19 µs of CPU per command against 1.7 µs
here, and 6 % of a streaming process's CPU in the benchmark (B5), where a turn sends a handful
of commands. So while a connection is idle and no caller is queued, a command takes it
directly (still through the pool's own ``ensure_connection``, which reconnects a connection the
server closed), and gives it back directly; otherwise, or while the pool is being rewritten by
a maintenance notification, the inherited path runs as it was, waits, timeout and fairness
included. It relies on the pool's two connection collections, which redis-py's asyncio pool
has kept under these names since it was ported from aioredis (4.2); a test checks them. The
direct return skips the event redis-py dispatches on a return, whose one listener
re-authenticates connections of a streaming credential provider: flowgate configures none (a
URL's password does not change).
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import BlockingConnectionPool
from redis.asyncio.connection import AbstractConnection


class LeanBlockingConnectionPool(BlockingConnectionPool):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Callers inside the inherited checkout (queued, or making a new connection): while
        #: there are any, returns go through the condition so that one of them is woken.
        self._queued = 0

    def _direct(self) -> bool:
        return not self._queued and not getattr(self, "_in_maintenance", False)

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        if self._available_connections and self._direct():
            connection = self._available_connections.pop()
            self._in_use_connections.add(connection)
            try:
                await self.ensure_connection(connection)
            except BaseException:
                await self.release(connection)
                raise
            return connection
        self._queued += 1
        try:
            queued: AbstractConnection = await super().get_connection()  # type: ignore[no-untyped-call]
            return queued
        finally:
            self._queued -= 1

    async def release(self, connection: AbstractConnection) -> None:
        if not self._direct():
            await super().release(connection)
            return
        self._in_use_connections.remove(connection)
        if connection.should_reconnect():  # type: ignore[no-untyped-call]
            await connection.disconnect()
        self._available_connections.append(connection)
