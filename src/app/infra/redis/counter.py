"""The Redis :class:`~app.domain.ports.ConnectionCounter`: a sorted set per user,
``{prefix}{user:<id>}:conns``, of this user's open connections (``<process>:<n>``) with the
time each entry lapses. A process refreshes its own entries every third of :data:`SLOT_TTL`,
so a dead process's connections stop counting within that time.

Acquires and releases of concurrent connections are joined into one pipeline, with the chat
owner lookups of the same admissions (:class:`~app.infra.redis.pipeline_batch.PipelineBatch`):
a reconnect storm costs a few round trips, not one per socket, and a release waits up to
:data:`RELEASE_LINGER` to go with the next acquires. The scripts are sent with ``EVAL``, which
Redis answers from its script cache: redis-py's registered scripts in a pipeline would first
ask ``SCRIPT EXISTS``, a round trip per batch.
"""

from __future__ import annotations

import asyncio
import logging

from app.domain.errors import StoreUnavailable
from app.infra.redis.client import AnyRedis
from app.infra.redis.errors import redis_errors_as_unavailable
from app.infra.redis.keys import RedisKeys
from app.infra.redis.pipeline_batch import PipelineBatch

logger = logging.getLogger(__name__)

SLOT_TTL = 60.0
#: Seconds a closed socket's release may wait for the next acquire's pipeline: nobody waits on
#: it, and while sockets keep connecting it then costs no round trip of its own.
RELEASE_LINGER = 0.02

# Drop lapsed entries, refuse at the limit, else add: atomic, on the server's clock.
_ACQUIRE = """
local now = redis.call('time')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
redis.call('zremrangebyscore', KEYS[1], '-inf', now_ms)
if redis.call('zcard', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('zadd', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[3])
redis.call('pexpire', KEYS[1], ARGV[2])
return 1
"""
_REFRESH = """
local now = redis.call('time')
local until_ms = now[1] * 1000 + math.floor(now[2] / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('zadd', KEYS[1], 'xx', until_ms, ARGV[i]) end
redis.call('pexpire', KEYS[1], ARGV[1])
return 1
"""


class RedisConnectionCounter:
    def __init__(
        self,
        redis: AnyRedis,
        keys: RedisKeys,
        *,
        slot_ttl: float = SLOT_TTL,
        batch: PipelineBatch | None = None,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl_ms = int(slot_ttl * 1000)
        #: This process's open slots, per user.
        self._mine: dict[str, set[str]] = {}
        self._refresher: asyncio.Task[None] | None = None
        # The sockets that open and those that close meanwhile share one pipeline (with
        # whatever else the batch's other users send), which this counter closes if it made.
        self._owns_batch = batch is None
        self._batch = batch or PipelineBatch(redis)

    async def acquire(self, user_id: str, slot: str, limit: int) -> bool:
        key = self._keys.connections(user_id)
        ok = await self._batch.send("EVAL", _ACQUIRE, 1, key, limit, self._ttl_ms, slot)
        if ok:
            self._mine.setdefault(user_id, set()).add(slot)
            if self._refresher is None:
                self._refresher = asyncio.get_running_loop().create_task(self._refresh_forever())
        return bool(ok)

    async def release(self, user_id: str, slot: str) -> None:
        slots = self._mine.get(user_id)
        if slots is not None:
            slots.discard(slot)
            if not slots:
                del self._mine[user_id]
        await self._batch.send("ZREM", self._keys.connections(user_id), slot, linger=RELEASE_LINGER)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._ttl_ms / 3000)
            mine = {user: list(slots) for user, slots in self._mine.items() if slots}
            try:
                with redis_errors_as_unavailable():
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for user, slots in mine.items():
                            pipe.eval(
                                _REFRESH, 1, self._keys.connections(user), self._ttl_ms, *slots
                            )
                        await pipe.execute()
            except StoreUnavailable as exc:
                logger.warning("connection counts not refreshed: %s", exc)

    async def aclose(self) -> None:
        if self._owns_batch:
            await self._batch.aclose()
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
            self._refresher = None
