"""The Redis :class:`~app.domain.ports.TurnLease`: key ``{prefix}{chat:<id>}:lease`` holds the
holder with a TTL (``SET NX PX``); a sorted set ``{prefix}{leases}`` holds each lease's
deadline, so that a sweep finds the leases that lapsed without a release (a process died).

Every turn takes a lease and gives it back, so the acquires of concurrent turns are joined into
one pipeline, and so are their releases (:class:`~app.infra.batching.Batcher`): in the
benchmark, 100 chats answering at once spent a fifth of the process's CPU in these two calls,
sent one by one. Within a batch the commands run in order, so of two acquires of one chat the
first wins, as before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from app.infra.batching import Batcher
from app.infra.redis.client import AnyRedis
from app.infra.redis.errors import redis_errors_as_unavailable
from app.infra.redis.keys import RedisKeys

# Renew: extend if still ours, take again if it vanished (lapsed, or lost by a restart).
_RENEW = """
local held = redis.call('get', KEYS[1])
if held == ARGV[1] or not held then
  redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[2])
  return 1
end
return 0
"""
# Release: only the holder's own lease (a late release must not free a newer turn's chat).
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class RedisLease:
    def __init__(self, redis: AnyRedis, keys: RedisKeys) -> None:
        self._redis = redis
        self._keys = keys
        self._renew = redis.register_script(_RENEW)
        self._acquires: Batcher[tuple[str, str, float], bool] = Batcher(self._acquire_all)
        self._releases: Batcher[tuple[str, str], None] = Batcher(self._release_all)

    async def acquire(self, chat_id: str, holder: str, ttl: float) -> bool:
        return await self._acquires.submit((chat_id, holder, ttl))

    async def _acquire_all(self, asked: Sequence[tuple[str, str, float]]) -> list[bool]:
        # One round trip per batch: each deadline goes with its SET, whether the SET wins or
        # not. ``LT`` adds it when the chat has none and otherwise only moves it earlier, so
        # it never puts off another holder's lapse; an earlier score than a live lease's is
        # harmless (the sweep checks that the lease is gone, and the holder's first renewal
        # sets its own). Before, a process that died between the SET and the ZADD left a lease
        # no sweep would find.
        keys = self._keys
        with redis_errors_as_unavailable():
            async with self._redis.pipeline(transaction=False) as pipe:
                for chat_id, holder, ttl in asked:
                    pipe.set(keys.lease(chat_id), holder, nx=True, px=_ms(ttl))
                    pipe.zadd(keys.leases, {chat_id: _deadline(ttl)}, lt=True)
                replies = await pipe.execute()
        return [bool(taken) for taken in replies[0::2]]

    async def renew(self, held: Sequence[tuple[str, str]], ttl: float) -> list[bool]:
        keys, deadline = self._keys, _deadline(ttl)
        with redis_errors_as_unavailable():
            # Concurrent script calls rather than one pipeline: a cluster routes each by its key.
            results = await asyncio.gather(
                *(
                    self._renew(keys=[keys.lease(chat_id)], args=[holder, _ms(ttl)])
                    for chat_id, holder in held
                )
            )
            kept = [bool(result) for result in results]
            ours = {chat_id: deadline for (chat_id, _), ok in zip(held, kept, strict=True) if ok}
            if ours:
                await self._redis.zadd(keys.leases, ours)
        return kept

    async def release(self, chat_id: str, holder: str) -> None:
        await self._releases.submit((chat_id, holder))

    async def _release_all(self, asked: Sequence[tuple[str, str]]) -> list[None]:
        # EVAL, not the registered script: in a pipeline that asks SCRIPT EXISTS first (a
        # round trip); Redis answers EVAL from its script cache. The deadlines of the leases
        # released go in a second step: one of a lease taken meanwhile by another holder stays.
        keys = self._keys
        with redis_errors_as_unavailable():
            async with self._redis.pipeline(transaction=False) as pipe:
                for chat_id, holder in asked:
                    pipe.eval(_RELEASE, 1, keys.lease(chat_id), holder)
                released = await pipe.execute()
            freed = {chat_id for (chat_id, _), done in zip(asked, released, strict=True) if done}
            if freed:
                await self._redis.zrem(keys.leases, *freed)
        return [None] * len(asked)

    async def holder(self, chat_id: str) -> str | None:
        with redis_errors_as_unavailable():
            value = await self._redis.get(self._keys.lease(chat_id))
        return value.decode() if isinstance(value, bytes) else value

    async def lapsed(self, limit: int) -> list[str]:
        with redis_errors_as_unavailable():
            found = await self._redis.zrangebyscore(
                self._keys.leases, "-inf", time.time() * 1000, start=0, num=limit
            )
            chats = [c.decode() if isinstance(c, bytes) else str(c) for c in found]
            if not chats:
                return []
            # The sorted set is a hint: a lease that is held (renewed late, or taken by a new
            # turn since) is not lapsed.
            async with self._redis.pipeline(transaction=False) as pipe:
                for chat_id in chats:
                    pipe.exists(self._keys.lease(chat_id))
                held = await pipe.execute()
        return [chat for chat, exists in zip(chats, held, strict=True) if not exists]


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _deadline(ttl: float) -> float:
    return time.time() * 1000 + ttl * 1000
