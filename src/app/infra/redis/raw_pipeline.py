"""A batch of commands as one write on a connection of its own, the replies parsed as they
arrive: what :class:`~app.infra.redis.pipeline_batch.PipelineBatch` sends for a single Redis
server (a cluster's batches go through redis-py's cluster pipeline, which routes each command to
its node).

Written here because redis-py's ``Pipeline`` costs more than the round trip it saves on the
path every connect takes. Per batch it checks a connection out of the pool (and probes it with
a zero timeout), packs each argument through its encoder with a buffer cut-off, sends under
``wait_for``, reads each reply under an ``asyncio.timeout`` of its own and a health-check
clock, and records observability events, all inside a retry wrapper (137-195 µs of this
process's CPU per admission batch, bench/README.md, the eighth session). Reading the replies
through redis-py's stream and parser coroutines cost a lone round trip 142,000 instructions
(callgrind) where an :class:`asyncio.Protocol` fed by the same hiredis reader costs 32,000
(the fifteenth session): so the held connection's transport is given :class:`_Replies`, which
parses what arrives and answers each batch's future, with no coroutine of its own.

What is kept from redis-py: the connection itself (it connects, authenticates, selects the
database, speaks the URL's protocol), its reply parsing (a hiredis reader made as its parser
makes one, so that error replies are redis-py's exceptions), its errors. The connection is
checked out of the client's pool once and held, as a SQL lane holds its connection
(``app.infra.sql.lanes``); one is enough, since a batcher keeps one batch in flight. Replies
are matched to batches in the order the batches were written. A connection found closed before
a batch is made again; a batch sent on a connection that had served before and is lost before
its replies is sent once more on a new one, as redis-py's one retry did. Sent twice, the
commands sent through here leave what once would: ``ZREM``, ``GETEX`` and ``SET`` are
idempotent, and the count's script adds the same member again. Only its answer may differ: if
the first had run, the second counts its own entry, which at the limit refuses the connect (the
entry lapses within the slot TTL, as it did under redis-py's retry). A batch that times out or
is cancelled before its last reply drops the connection (failing the batches behind it), so
that a server that is stuck is not waited on again and no reply is ever read as another
command's.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, cast

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, InvalidResponse, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.infra.redis.client import COMMAND_TIMEOUT

Command = tuple[Any, ...]


#: What the reply reader answers while a reply has not wholly arrived.
_NOT_ENOUGH_DATA = object()


def _as_is(error: Exception) -> Exception:
    return error


class _Batch:
    """A batch written and waiting for its replies."""

    __slots__ = ("expected", "future", "packed", "replies", "retry", "timer")

    def __init__(self, future: asyncio.Future[list[Any]], packed: bytes, expected: int) -> None:
        self.future = future
        self.packed = packed
        self.expected = expected
        self.replies: list[Any] = []
        #: Whether the batch may be sent once more if its connection is lost (it went out on
        #: a connection that had served before, and has not been sent again yet).
        self.retry = False
        self.timer: asyncio.TimerHandle | None = None


class _Replies(asyncio.Protocol):
    """The held connection's protocol once it is connected: feeds what arrives to the reply
    parser and answers the batches in the order they were written. The stream protocol that
    redis-py's connection made is told when the connection is lost, so that redis-py's own
    view of it (at EOF, closed) stays true."""

    def __init__(self, transport: asyncio.Transport, reader: Any, stream_protocol: Any) -> None:
        self.transport = transport
        self._reader = reader
        self._stream_protocol = stream_protocol
        self.waiting: deque[_Batch] = deque()
        self.lost: Callable[[deque[_Batch], Exception | None], None] | None = None
        self.closed = False
        self.dropped = False  # closed by this side (a timeout, a cancellation, shutting down)
        self.served = False  # a batch was answered on it

    def data_received(self, data: bytes) -> None:
        reader, waiting = self._reader, self.waiting
        reader.feed(data)
        while waiting:
            try:
                reply = reader.gets()
            except Exception as error:  # not the protocol: nothing more can be read in step
                self.transport.abort()
                self.closed = self.dropped = True
                self._fail_all(RedisConnectionError(f"Redis protocol error: {error}"))
                return
            if reply is _NOT_ENOUGH_DATA:
                return
            batch = waiting[0]
            batch.replies.append(reply)
            if len(batch.replies) == batch.expected:
                waiting.popleft()
                self.served = True
                if batch.timer is not None:
                    batch.timer.cancel()
                if batch.future.done():  # cancelled: its replies are read all the same
                    continue
                refused = next((r for r in batch.replies if isinstance(r, ResponseError)), None)
                if refused is None:
                    batch.future.set_result(batch.replies)
                else:
                    batch.future.set_exception(refused)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiting, self.waiting = self.waiting, deque()
        if self.lost is not None:
            self.lost(waiting, exc)
        self._stream_protocol.connection_lost(exc)

    def _fail_all(self, error: Exception) -> None:
        waiting, self.waiting = self.waiting, deque()
        for batch in waiting:
            if batch.timer is not None:
                batch.timer.cancel()
            if not batch.future.done():
                batch.future.set_exception(error)


class RawPipeline:
    def __init__(
        self,
        redis: Redis,
        *,
        timeout: float = COMMAND_TIMEOUT,
        errors: Callable[[Exception], Exception] = _as_is,
    ) -> None:
        """``errors``: what a lost connection's or a timeout's redis-py error is raised as
        (the batch's callers see it; a reply that is an error is raised as it is)."""
        self._pool = redis.connection_pool
        self._timeout = timeout
        self._errors = errors
        self._connection: AbstractConnection | None = None
        self._replies: _Replies | None = None
        #: Batches written while the connection is being made, and the task making it.
        self._queued: list[_Batch] = []
        self._connecting: asyncio.Task[None] | None = None

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        """Each command's reply, in order; a command that Redis answers with an error raises
        that error (after every reply is read, as a pipeline with ``raise_on_error`` does).
        A lost connection or a timeout raises redis-py's ``ConnectionError``/``TimeoutError``."""
        future = self.start(commands)
        try:
            return await future
        except asyncio.CancelledError:
            # Cut short before its last reply: the connection goes (see the module docstring).
            replies = self._replies
            if replies is not None and any(b.future is future for b in replies.waiting):
                self._drop(replies)
            raise

    def start(self, commands: Sequence[Command]) -> asyncio.Future[list[Any]]:
        """:meth:`execute` as a future, the batch written now if the connection is up: no
        coroutine per batch. Raises :class:`~redis.exceptions.DataError` at once for an
        argument that cannot be sent."""
        packed = pack(commands)
        loop = asyncio.get_running_loop()
        batch = _Batch(loop.create_future(), packed, len(commands))
        replies = self._replies
        if replies is not None and not replies.closed and not replies.transport.is_closing():
            batch.retry = replies.served
            self._write(replies, batch)
        else:
            self._queued.append(batch)
            if self._connecting is None:
                self._connecting = loop.create_task(self._connect())
        return batch.future

    def _write(self, replies: _Replies, batch: _Batch) -> None:
        replies.waiting.append(batch)
        batch.timer = asyncio.get_running_loop().call_later(
            self._timeout, self._timed_out, replies, batch
        )
        replies.transport.write(batch.packed)

    def _timed_out(self, replies: _Replies, batch: _Batch) -> None:
        batch.timer = None
        if batch.future.done():
            return
        batch.future.set_exception(
            self._errors(RedisTimeoutError(f"no reply from Redis within {self._timeout} s"))
        )
        self._drop(replies)

    def _drop(self, replies: _Replies) -> None:
        replies.dropped = True
        if not replies.closed:
            replies.closed = True
            replies.transport.abort()  # connection_lost fails the batches behind

    def _lost(self, replies: _Replies, waiting: deque[_Batch], exc: Exception | None) -> None:
        """The connection is gone: each batch still waiting is sent once more on a new one if
        it may be (see :class:`_Batch`), else fails."""
        if self._replies is replies:
            self._replies = None
        for batch in waiting:
            if batch.timer is not None:
                batch.timer.cancel()
                batch.timer = None
            if batch.future.done():
                continue
            if batch.retry and not replies.dropped:
                batch.retry = False
                batch.replies = []
                self._queued.append(batch)
            else:
                detail = f": {exc}" if exc is not None else ""
                batch.future.set_exception(
                    self._errors(RedisConnectionError(f"Redis connection lost{detail}"))
                )
        if self._queued and self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        """Make the connection (again), then write the batches that waited for it."""
        try:
            replies = await self._connected()
        except Exception as error:
            self._connecting = None
            queued, self._queued = self._queued, []
            if not isinstance(error, RedisConnectionError | RedisTimeoutError):
                error = RedisConnectionError(f"Redis connection failed: {error}")
            for batch in queued:
                if not batch.future.done():
                    batch.future.set_exception(self._errors(error))
            return
        self._connecting = None
        queued, self._queued = self._queued, []
        for batch in queued:
            if not batch.future.done():
                self._write(replies, batch)

    async def _connected(self) -> _Replies:
        connection = self._connection
        if connection is None:
            connection = self._connection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
            # The pool hands out an idle connection as it is: one the server closed meanwhile
            # has its end of stream read already, and would take a batch and never answer.
            stream, writer = connection._reader, connection._writer
            usable = not (
                stream is None or writer is None or stream.at_eof() or writer.transport.is_closing()
            )
        else:  # it served here before and was lost (or dropped): made again
            usable = False
        if not usable:
            await connection.disconnect(nowait=True)
            # redis-py's connect: retried once, then its ConnectionError.
            await connection.connect()
        writer = connection._writer
        if writer is None:
            raise RedisConnectionError("the connection did not connect")
        transport = cast(asyncio.Transport, writer.transport)
        replies = _Replies(transport, _reply_reader(connection), transport.get_protocol())
        replies.lost = partial(self._lost, replies)
        transport.set_protocol(replies)
        self._replies = replies
        return replies

    async def aclose(self) -> None:
        """Close the held connection and give it back to the pool (the client's ``aclose``
        closes the pool): a batch still waiting fails as lost."""
        if self._connecting is not None:
            await asyncio.gather(self._connecting, return_exceptions=True)
        replies, self._replies = self._replies, None
        connection, self._connection = self._connection, None
        if replies is not None:
            replies.dropped = True
        if connection is not None:
            await connection.disconnect(nowait=True)
            await self._pool.release(connection)


def _reply_reader(connection: AbstractConnection) -> hiredis.Reader:
    """A hiredis reader made as redis-py makes its own for the connection (its parser's error
    classes, its response decoding), but telling "not enough data yet" by a marker of this
    module's, which no reply can be (a RESP3 boolean can be ``False``)."""
    options: dict[str, Any] = {}
    if connection.encoder.decode_responses:
        options = {
            "encoding": connection.encoder.encoding,
            "errors": connection.encoder.encoding_errors,
        }
    return hiredis.Reader(
        protocolError=InvalidResponse,
        replyError=connection._parser.parse_error,
        notEnoughData=_NOT_ENOUGH_DATA,
        **options,
    )


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
