"""A batch of commands as one write on a connection of its own, the replies read straight from
redis-py's parser: what :class:`~app.infra.redis.pipeline_batch.PipelineBatch` sends for a
single Redis server (a cluster's batches go through redis-py's cluster pipeline, which routes
each command to its node).

Written here because redis-py's ``Pipeline`` costs more than the round trip it saves on the
path every connect takes. Per batch it checks a connection out of the pool (and probes it with
a zero timeout), packs each argument through its encoder with a buffer cut-off, sends under
``wait_for``, reads each reply under an ``asyncio.timeout`` of its own and a health-check
clock, and records observability events, all inside a retry wrapper. For the admission's
batch (the count's ``EVAL`` and the owner's ``GETEX``) that was 137-195 µs of this process's CPU
against 60-85 µs here, measured against the real server (bench/README.md, the eighth session).

What is kept from redis-py: the connection itself (it connects, authenticates, selects the
database, speaks the URL's protocol), its parser, its errors. The connection is checked out of
the client's pool once and held, as a SQL lane holds its connection (``app.infra.sql.lanes``);
one is enough, since a batcher keeps one batch in flight. A connection found closed before a
batch is made again; one lost during a reused connection's batch is made again and the batch
sent once more, as redis-py's one retry did. Sent twice, the commands sent through here leave
what once would: ``ZREM``, ``GETEX`` and ``SET`` are idempotent, and the count's script adds
the same member again. Only its answer may differ: if the first had run, the second counts its
own entry, which at the limit refuses the connect (the entry lapses within the slot TTL, as it
did under redis-py's retry). Anything that interrupts a batch
between its write and its last reply (a timeout, a cancellation) drops the connection, so that
no reply is ever read as another command's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.infra.redis.client import COMMAND_TIMEOUT

Command = tuple[Any, ...]


class RawPipeline:
    def __init__(self, redis: Redis, *, timeout: float = COMMAND_TIMEOUT) -> None:
        self._pool = redis.connection_pool
        self._timeout = timeout
        self._connection: AbstractConnection | None = None

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        """Each command's reply, in order; a command that Redis answers with an error raises
        that error (after every reply is read, as a pipeline with ``raise_on_error`` does).
        A lost connection or a timeout raises redis-py's ``ConnectionError``/``TimeoutError``."""
        packed = pack(commands)
        connection, reused = await self._ready()
        try:
            replies = await self._round_trip(connection, packed, len(commands))
        except RedisConnectionError:
            if not reused:
                raise
            # A connection that sat idle may have been closed under us: once more, on a new one.
            connection, _ = await self._ready()
            replies = await self._round_trip(connection, packed, len(commands))
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies

    async def _ready(self) -> tuple[AbstractConnection, bool]:
        """The held connection, connected (the bool: whether it was already), or a new one."""
        connection = self._connection
        if connection is None:
            connection = self._connection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
            return connection, False
        reader, writer = connection._reader, connection._writer
        if reader is None or writer is None or reader.at_eof() or writer.transport.is_closing():
            await connection.disconnect(nowait=True)
            # redis-py's connect: retried once, then its ConnectionError.
            await connection.connect()  # type: ignore[no-untyped-call]
            return connection, False
        return connection, True

    async def _round_trip(
        self, connection: AbstractConnection, packed: bytes, replies: int
    ) -> list[Any]:
        # An asynchronous parser: redis-py types the attribute as the base of every parser.
        writer, parser = connection._writer, cast(Any, connection._parser)
        assert writer is not None  # _ready() connected it
        try:
            async with asyncio.timeout(self._timeout):
                writer.write(packed)
                if writer.transport.get_write_buffer_size():  # the socket did not take it all
                    await writer.drain()
                return [await parser.read_response() for _ in range(replies)]
        except TimeoutError:
            await connection.disconnect(nowait=True)
            raise RedisTimeoutError(f"no reply from Redis within {self._timeout} s") from None
        except OSError as error:
            await connection.disconnect(nowait=True)
            raise RedisConnectionError(f"Redis connection lost: {error}") from error
        except BaseException:  # the parser's ConnectionError, a cancellation: replies unread
            await connection.disconnect(nowait=True)
            raise

    async def aclose(self) -> None:
        """Give the connection back to the pool (the client's ``aclose`` closes it)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            await self._pool.release(connection)


def pack(commands: Sequence[Command]) -> bytes:
    """The commands in the Redis protocol (RESP arrays of bulk strings), as one buffer.

    Arguments as redis-py's encoder takes them: bytes as they are, ``str`` in UTF-8 (redis-py's
    default encoding; flowgate's clients set no other), integers
    and floats as their decimal text (``repr`` for floats keeps every digit); anything else
    (``None``, a bool) is a :class:`~redis.exceptions.DataError` before anything is sent.
    """
    parts: list[bytes] = []
    append = parts.append
    for command in commands:
        append(b"*%d\r\n" % len(command))
        for arg in command:
            if isinstance(arg, bytes):
                data = arg
            elif isinstance(arg, str):
                data = arg.encode()
            elif isinstance(arg, int) and not isinstance(arg, bool):
                data = b"%d" % arg
            elif isinstance(arg, float):
                data = repr(arg).encode()
            elif isinstance(arg, memoryview):
                data = arg.tobytes()
            else:
                raise DataError(
                    f"Invalid input of type: {type(arg).__name__!r}. "
                    "Convert to a bytes, string, int or float first."
                )
            append(b"$%d\r\n" % len(data))
            append(data)
            append(b"\r\n")
    return b"".join(parts)
