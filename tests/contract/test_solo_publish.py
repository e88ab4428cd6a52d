"""A turn's batches are published on its chat's channel only while another process listens
(app.infra.redis.turn_log, PUBSUB NUMSUB): a process alone with its chat does not hear its own
frames back, and a process that begins listening mid-turn gets the rest, the part it missed
read from the log."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import msgspec
import pytest
from redis.asyncio import Redis

from app.domain.chats import TurnState
from tests.contract.conftest import CALL_TIMEOUT
from tests.contract.shared_state import Node
from tests.contract.test_turn_log import Heard, frame, record

pytestmark = pytest.mark.integration


@pytest.fixture
def nodes(server_nodes: Callable[[], Node]) -> Callable[[], Node]:
    return server_nodes


async def _publishes(redis_url: str) -> int:
    """PUBLISH commands the server has run (INFO commandstats), whoever sent them."""
    client = Redis.from_url(redis_url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return int(stats.get("cmdstat_publish", {}).get("calls", 0))


async def _confirmed(node: Node, chat: str) -> None:
    async with asyncio.timeout(CALL_TIMEOUT):
        while not node.channels.listens(chat):
            await asyncio.sleep(0.01)


async def test_a_turn_alone_with_its_chat_publishes_only_its_first_batch_and_its_end(
    nodes: Callable[[], Node], redis_url: str
) -> None:
    producer = nodes()
    own = Heard()
    producer.channels.attach(own)
    chat, turn = uuid.uuid4().hex, "t-solo"
    await producer.channels.join(chat)
    await _confirmed(producer, chat)
    before = await _publishes(redis_url)
    producer.log.start(record(chat, turn))
    for seq in range(10):  # ten batches: each flushed on its own
        producer.log.append(chat, turn, seq, frame(seq))
        await producer.log.flush()
    producer.log.end(msgspec.structs.replace(record(chat, turn), state=TurnState.ENDED))
    await producer.log.flush()
    published = await _publishes(redis_url) - before
    # The first batch (nobody was known to listen or not), then the end's last frame again.
    assert published == 2
    logged = await producer.log.read(chat, turn, -1)
    assert logged is not None and logged.frames == [frame(s) for s in range(10)]


async def test_a_process_that_starts_listening_mid_turn_gets_the_rest(
    nodes: Callable[[], Node], redis_url: str
) -> None:
    producer, joiner = nodes(), nodes()
    heard = Heard()
    joiner.channels.attach(heard)
    producer.channels.attach(Heard())
    chat, turn = uuid.uuid4().hex, "t-join"
    await producer.channels.join(chat)
    await _confirmed(producer, chat)
    producer.log.start(record(chat, turn))
    for seq in range(3):  # alone: after the first, unpublished
        producer.log.append(chat, turn, seq, frame(seq))
        await producer.log.flush()
    await joiner.channels.join(chat)
    await _confirmed(joiner, chat)
    before = await _publishes(redis_url)
    for seq in range(3, 8):
        producer.log.append(chat, turn, seq, frame(seq))
        await producer.log.flush()
    # The batch logged right after the join may go unpublished (the NUMSUB that counts the
    # joiner is sent with it); every later one is published, so the joiner hears a gap and
    # reads it from the log.
    await heard.until(lambda: any(seq == 7 for _, _, seq, _ in heard.frames))
    assert await _publishes(redis_url) - before >= 4
    seen = {seq for _, _, seq, _ in heard.frames}
    assert {4, 5, 6, 7} <= seen
    missed = await joiner.log.read(chat, turn, -1)
    assert missed is not None and missed.frames == [frame(s) for s in range(8)]
