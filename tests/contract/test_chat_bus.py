"""The ChatBus contract: the in-process bus and the Redis bus agree on turn claims; the Redis
bus carries frames, stops and joins between two "processes" (two buses, two clients)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from app.domain.errors import StoreUnavailable
from app.domain.ports import ChatBus
from app.infra.bus.memory import InProcessChatBus
from app.infra.redis.chat_bus import RedisChatBus
from tests.contract.conftest import CALL_TIMEOUT, CLOSED_REDIS_URL, Clients

MEMORY, REDIS = "memory", "redis"


class Recorder:
    """A ChatBusListener that remembers what arrived."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, bytes]] = []
        self.stops: list[str] = []
        self.joins: list[str] = []
        self.arrived = asyncio.Event()

    async def on_remote_frame(self, chat_id: str, frame: bytes) -> None:
        self.frames.append((chat_id, frame))
        self.arrived.set()

    def on_remote_stop(self, chat_id: str) -> None:
        self.stops.append(chat_id)
        self.arrived.set()

    def on_remote_join(self, chat_id: str) -> None:
        self.joins.append(chat_id)
        self.arrived.set()

    async def wait(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(CALL_TIMEOUT):
            while not condition():
                self.arrived.clear()
                await self.arrived.wait()


@pytest.fixture
async def redis_buses(
    clients: Clients, redis_url: str, redis_prefix: str
) -> AsyncIterator[Callable[[], RedisChatBus]]:
    made: list[RedisChatBus] = []

    def make() -> RedisChatBus:
        bus = RedisChatBus(clients.redis(redis_url), redis_prefix)
        made.append(bus)
        return bus

    yield make
    for bus in made:
        await bus.aclose()


@pytest.fixture(params=[MEMORY, pytest.param(REDIS, marks=pytest.mark.integration)])
def bus(request: pytest.FixtureRequest) -> ChatBus:
    if request.param == MEMORY:
        return InProcessChatBus()
    made: RedisChatBus = request.getfixturevalue("redis_buses")()
    return made


async def test_one_turn_at_a_time_per_chat(bus: ChatBus) -> None:
    chat = uuid.uuid4().hex
    assert not await bus.turn_running(chat)
    assert await bus.claim_turn(chat, "t1", 30)
    assert await bus.turn_running(chat)
    assert not await bus.claim_turn(chat, "t2", 30)
    assert await bus.claim_turn("another-" + chat, "t3", 30)
    await bus.release_turn(chat, "t2")  # not the holder: nothing happens
    assert await bus.turn_running(chat)
    await bus.release_turn(chat, "t1")
    assert not await bus.turn_running(chat)
    assert await bus.claim_turn(chat, "t2", 30)


async def test_a_claim_expires_with_its_ttl(bus: ChatBus) -> None:
    chat = uuid.uuid4().hex
    assert await bus.claim_turn(chat, "t1", 0.2)
    await asyncio.sleep(0.4)
    assert not await bus.turn_running(chat)
    assert await bus.claim_turn(chat, "t2", 30)


async def test_concurrent_claims_have_one_winner(bus: ChatBus) -> None:
    chat = uuid.uuid4().hex
    results = await asyncio.gather(*(bus.claim_turn(chat, f"t{i}", 30) for i in range(10)))
    assert results.count(True) == 1


@pytest.mark.integration
async def test_frames_stops_and_joins_cross_processes(
    redis_buses: Callable[[], RedisChatBus],
) -> None:
    one, two = redis_buses(), redis_buses()
    heard_by_one, heard_by_two = Recorder(), Recorder()
    one.attach(heard_by_one)
    two.attach(heard_by_two)
    chat = uuid.uuid4().hex

    await one.join(chat)
    assert await one.publish(chat, b"alone") is False  # nobody else listens
    await two.join(chat)
    await heard_by_one.wait(lambda: heard_by_one.joins == [chat])
    assert await one.publish(chat, b'{"type":"stream"}') is True
    await heard_by_two.wait(lambda: bool(heard_by_two.frames))
    assert heard_by_two.frames == [(chat, b'{"type":"stream"}')]
    assert heard_by_one.frames == []  # a process does not hear itself

    await two.request_stop(chat)
    await heard_by_one.wait(lambda: heard_by_one.stops == [chat])
    assert heard_by_two.stops == []

    await two.leave(chat)
    await asyncio.sleep(0.1)
    assert await one.publish(chat, b"gone") is False


@pytest.mark.integration
async def test_unreachable_redis_is_store_unavailable(clients: Clients) -> None:
    bus = RedisChatBus(clients.redis(CLOSED_REDIS_URL), "x:")
    async with asyncio.timeout(CALL_TIMEOUT):
        with pytest.raises(StoreUnavailable):
            await bus.claim_turn("c", "t", 30)
        with pytest.raises(StoreUnavailable):
            await bus.join("c")
    await bus.aclose()
