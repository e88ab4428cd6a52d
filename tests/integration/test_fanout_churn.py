"""The fan-out's pub/sub connection under churn, over the machine's Redis: chats joined after
every chat was left, while the reader waits on the same connection (what a burst of one-chat
sockets does), long after the client's health-check interval has passed."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from app.domain.chats import TurnRecord
from app.infra.redis import RedisChannels, RedisKeys, RedisTurnLog
from app.infra.redis import client as redis_client
from app.infra.redis.client import make_redis

pytestmark = pytest.mark.integration


class Heard:
    def __init__(self) -> None:
        self.chats: set[str] = set()
        self.arrived = asyncio.Event()

    def on_frames(self, chat_id: str, turn_id: str, first_seq: int, frames: list[bytes]) -> None:
        self.chats.add(chat_id)
        self.arrived.set()

    def on_resync(self) -> None:
        pass


async def test_joining_after_every_chat_was_left_keeps_the_fan_out_working(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The client's health check is due at every command: redis-py then PINGs and reads the
    # answer on a pub/sub connection that has no channel, while the fan-out's reader waits on it.
    monkeypatch.setattr(redis_client, "HEALTH_CHECK_INTERVAL", 0.001)
    watcher_redis, producer_redis = make_redis(redis_url), make_redis(redis_url)
    keys = RedisKeys(redis_prefix)
    watcher = RedisChannels(watcher_redis, keys, origin=b"watcher")
    log = RedisTurnLog(producer_redis, keys, origin=b"producer", ttl=60, live_ttl=60)
    heard = Heard()
    watcher.attach(heard)
    try:
        for _round in range(5):
            chats = [uuid.uuid4().hex for _ in range(4)]
            async with asyncio.timeout(5):
                await asyncio.gather(*(watcher.join(chat) for chat in chats))
            await asyncio.sleep(0.05)  # the reader waits on the connection; the check is due
            for chat in chats:
                log.start(
                    TurnRecord(chat_id=chat, turn_id="t", flow_id="f", user_id="u", holder="p/t")
                )
                log.append(chat, "t", 0, b'{"type":"stream"}')
            async with asyncio.timeout(5):
                while not heard.chats >= set(chats):
                    heard.arrived.clear()
                    await heard.arrived.wait()
            async with asyncio.timeout(5):
                await asyncio.gather(*(watcher.leave(chat) for chat in chats))
            await asyncio.sleep(0.05)
    finally:
        await watcher.aclose()
        await log.aclose()
        await watcher_redis.aclose()
        await producer_redis.aclose()
