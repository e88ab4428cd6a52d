"""The Redis adapters' metrics over the machine's Redis: the delivery lag of frames published
by another process, and the turn log's failed writes while Redis cannot be reached."""

from __future__ import annotations

import asyncio
import socket
import uuid

import pytest
from prometheus_client import CollectorRegistry

from app.domain.chats import TurnRecord
from app.infra.metrics import PrometheusMetrics
from app.infra.redis import RedisChannels, RedisKeys, RedisTurnLog
from app.infra.redis.client import make_redis

pytestmark = pytest.mark.integration

TTL = 60.0


class Heard:
    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.arrived = asyncio.Event()

    def on_frames(self, chat_id: str, turn_id: str, first_seq: int, frames: list[bytes]) -> None:
        self.frames.extend(frames)
        self.arrived.set()

    def on_resync(self) -> None:
        pass


def _record(chat: str) -> TurnRecord:
    return TurnRecord(chat_id=chat, turn_id="t-1", flow_id="f", user_id="u", holder="p/t-1")


async def test_frames_from_another_process_observe_their_delivery_lag(
    redis_url: str, redis_prefix: str
) -> None:
    keys = RedisKeys(redis_prefix)
    producer_redis, watcher_redis = make_redis(redis_url), make_redis(redis_url)
    registry = CollectorRegistry()
    watching = PrometheusMetrics(registry)
    producer = RedisTurnLog(producer_redis, keys, origin=b"producer", ttl=TTL, live_ttl=TTL)
    channels = RedisChannels(watcher_redis, keys, origin=b"watcher", metrics=watching)
    heard = Heard()
    channels.attach(heard)
    chat = uuid.uuid4().hex
    try:
        await channels.join(chat)
        await asyncio.sleep(0.05)  # the subscription takes effect
        producer.start(_record(chat))
        for seq in range(3):
            producer.append(chat, "t-1", seq, b'{"seq":%d}' % seq)
        async with asyncio.timeout(5):
            while len(heard.frames) < 3:
                heard.arrived.clear()
                await heard.arrived.wait()
    finally:
        await producer.aclose()
        await channels.aclose()
        await producer_redis.aclose()
        await watcher_redis.aclose()
    count = registry.get_sample_value("flowgate_bus_delivery_lag_seconds_count")
    total = registry.get_sample_value("flowgate_bus_delivery_lag_seconds_sum")
    assert count is not None and count >= 1
    assert total is not None and 0 <= total < count * 1.0  # well under a second each


async def test_failed_turn_log_writes_are_bus_publish_failures() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    redis = make_redis(f"redis://127.0.0.1:{port}/0")
    registry = CollectorRegistry()
    log = RedisTurnLog(
        redis,
        RedisKeys("p:"),
        origin=b"alone",
        ttl=TTL,
        live_ttl=TTL,
        metrics=PrometheusMetrics(registry),
    )
    try:
        log.start(_record("c1"))
        log.append("c1", "t-1", 0, b"{}")
        failures = 0.0
        for _ in range(100):  # the writer retries 0.1 s, 0.2 s ... apart
            failures = registry.get_sample_value("flowgate_bus_publish_failures_total") or 0.0
            if failures >= 2:
                break
            await asyncio.sleep(0.05)
        assert failures >= 2
    finally:
        await log.aclose()
        await redis.aclose()
