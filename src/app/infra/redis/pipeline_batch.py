"""Small commands of concurrent callers, sent as one pipeline per batch
(:class:`~app.infra.batching.Batcher`), whichever adapter they come from: the connection
count's acquire and the chat owner's lookup of one admission go in one round trip, and so do
those of every socket connecting meanwhile.

On a single server a batch is one write on a connection of its own
(:class:`~app.infra.redis.raw_pipeline.RawPipeline`), answered through a future with no task or
coroutine per batch; on a cluster, redis-py's cluster pipeline, which sends each command to its
node.

A command that fails in Redis (a script error) fails every command of its batch, as a
pipeline run with ``raise_on_error`` does; a lost connection fails them with
:class:`~app.domain.errors.StoreUnavailable`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from app.infra.batching import Batcher
from app.infra.redis.client import AnyRedis
from app.infra.redis.errors import as_unavailable, redis_errors_as_unavailable
from app.infra.redis.raw_pipeline import RawPipeline

Command = tuple[Any, ...]


class PipelineBatch:
    def __init__(self, redis: AnyRedis) -> None:
        self._redis = redis
        self._raw = RawPipeline(redis, errors=as_unavailable) if isinstance(redis, Redis) else None
        # One batch at a time: the raw pipeline has one connection.
        self._batcher: Batcher[Command, Any] = Batcher(
            self._run if self._raw is None else self._raw.start, max_in_flight=1
        )

    def send(self, *command: Any, linger: float = 0.0) -> asyncio.Future[Any]:
        """The command's reply, once its batch is answered. In the batch as it returns, so
        that commands sent one after another without awaiting share the round trip;
        ``linger``: see :meth:`Batcher.submit`."""
        return self._batcher.enqueue(command, linger=linger)

    async def _run(self, commands: Sequence[Command]) -> list[Any]:
        """A cluster's batch."""
        with redis_errors_as_unavailable():
            async with self._redis.pipeline(transaction=False) as pipe:
                for command in commands:
                    pipe.execute_command(*command)
                return await pipe.execute()

    async def aclose(self) -> None:
        await self._batcher.aclose()
        if self._raw is not None:
            await self._raw.aclose()
