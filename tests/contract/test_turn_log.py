"""The TurnLog and ChatFanOut contract, over the in-process twin and Redis: frames kept by
position, read from any process, published to the chat's other processes after they are
logged; records of the chat's latest turn."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import msgspec
import pytest

from app.domain.chats import TurnRecord, TurnState
from tests.contract.conftest import CALL_TIMEOUT
from tests.contract.shared_state import Node


class Heard:
    def __init__(self) -> None:
        self.frames: list[tuple[str, str, int, bytes]] = []
        self.stops: list[str] = []
        self.resyncs = 0
        self.arrived = asyncio.Event()

    def on_frames(self, chat_id: str, turn_id: str, first_seq: int, frames: list[bytes]) -> None:
        for offset, frame in enumerate(frames):
            self.frames.append((chat_id, turn_id, first_seq + offset, frame))
        self.arrived.set()

    def on_resync(self) -> None:
        self.resyncs += 1

    def on_stop(self, chat_id: str) -> None:
        self.stops.append(chat_id)
        self.arrived.set()

    async def until(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(CALL_TIMEOUT):
            while not condition():
                self.arrived.clear()
                await self.arrived.wait()


def record(chat: str, turn: str, **fields: object) -> TurnRecord:
    return TurnRecord(
        chat_id=chat,
        turn_id=turn,
        flow_id="f",
        user_id="u",
        holder="p/" + turn,
        **fields,  # type: ignore[arg-type]
    )


def frame(seq: int) -> bytes:
    return b'{"type":"stream","message":"piece %d","seq":%d}' % (seq, seq)


async def test_frames_are_read_back_by_position_from_another_process(
    nodes: Callable[[], Node],
) -> None:
    writer, reader = nodes(), nodes()
    chat, turn = uuid.uuid4().hex, "t-1"
    writer.log.start(record(chat, turn))
    for seq in range(5):
        writer.log.append(chat, turn, seq, frame(seq))
    await writer.log.flush()
    whole = await reader.log.read(chat, turn, -1)
    assert whole is not None and whole.first_seq == 0
    assert whole.frames == [frame(s) for s in range(5)]
    rest = await reader.log.read(chat, turn, 2)
    assert rest is not None and rest.first_seq == 3 and rest.frames == [frame(3), frame(4)]
    assert rest.covers(2)
    done = await reader.log.read(chat, turn, 4)
    assert done is not None and done.frames == [] and done.next_seq == 5
    beyond = await reader.log.read(chat, turn, 9)
    assert beyond is not None and beyond.frames == [] and beyond.next_seq == 5
    assert await reader.log.read(chat, "t-unknown", -1) is None
    current = await reader.log.current(chat)
    assert current is not None and current.turn_id == turn and current.state is TurnState.RUNNING


async def test_a_repeated_position_is_kept_once(nodes: Callable[[], Node]) -> None:
    node = nodes()
    chat, turn = uuid.uuid4().hex, "t-1"
    node.log.start(record(chat, turn))
    node.log.append(chat, turn, 0, frame(0))
    node.log.append(chat, turn, 0, b"a different frame 0")
    node.log.append(chat, turn, 1, frame(1))
    await node.log.flush()
    logged = await node.log.read(chat, turn, -1)
    assert logged is not None and logged.frames == [frame(0), frame(1)]


async def test_the_latest_record_wins_and_an_ended_turn_keeps_its_log(
    nodes: Callable[[], Node],
) -> None:
    node = nodes()
    chat = uuid.uuid4().hex
    node.log.start(record(chat, "t-1", question_id=7))
    node.log.append(chat, "t-1", 0, frame(0))
    ended = msgspec.structs.replace(
        record(chat, "t-1", question_id=7), state=TurnState.ENDED, answer_stored=True
    )
    node.log.end(ended)
    await node.log.flush()
    assert await node.log.current(chat) == ended
    node.log.start(record(chat, "t-2"))
    await node.log.flush()
    current = await node.log.current(chat)
    assert current is not None and current.turn_id == "t-2"
    old = await node.log.read(chat, "t-1", -1)
    assert old is not None and old.frames == [frame(0)]


async def test_appended_frames_reach_the_other_processes_of_the_chat(
    nodes: Callable[[], Node],
) -> None:
    producer, watcher, stranger = nodes(), nodes(), nodes()
    heard, unheard, own = Heard(), Heard(), Heard()
    watcher.channels.attach(heard)
    stranger.channels.attach(unheard)
    producer.channels.attach(own)
    chat, turn = uuid.uuid4().hex, "t-1"
    await watcher.channels.join(chat)
    await producer.channels.join(chat)
    await stranger.channels.join(uuid.uuid4().hex)  # another chat
    await asyncio.sleep(0.05)  # subscriptions take effect
    producer.log.start(record(chat, turn))
    for seq in range(4):
        producer.log.append(chat, turn, seq, frame(seq))
    await heard.until(lambda: len(heard.frames) == 4)
    assert heard.frames == [(chat, turn, seq, frame(seq)) for seq in range(4)]
    # Whatever a process heard is in the log already.
    logged = await watcher.log.read(chat, turn, -1)
    assert logged is not None and len(logged.frames) == 4
    await asyncio.sleep(0.05)
    assert own.frames == [] and unheard.frames == []  # not its own, not another chat's


async def test_stop_reaches_the_other_processes(nodes: Callable[[], Node]) -> None:
    asking, running = nodes(), nodes()
    heard, own = Heard(), Heard()
    running.channels.attach(heard)
    asking.channels.attach(own)
    chat = uuid.uuid4().hex
    await running.channels.join(chat)
    await asking.channels.join(chat)
    await asyncio.sleep(0.05)
    await asking.channels.request_stop(chat)
    await heard.until(lambda: heard.stops == [chat])
    assert own.stops == []


async def test_a_left_chat_is_not_heard(nodes: Callable[[], Node]) -> None:
    producer, watcher = nodes(), nodes()
    heard = Heard()
    watcher.channels.attach(heard)
    chat = uuid.uuid4().hex
    await watcher.channels.join(chat)
    await watcher.channels.leave(chat)
    await asyncio.sleep(0.05)
    producer.log.start(record(chat, "t"))
    producer.log.append(chat, "t", 0, frame(0))
    await producer.log.flush()
    await asyncio.sleep(0.1)
    assert heard.frames == []


async def test_chats_joined_and_left_at_once_are_heard_exactly(
    nodes: Callable[[], Node],
) -> None:
    """A burst of joins and leaves (the Redis adapter joins them into few commands, in order):
    every joined chat is heard, every left one is not, and a chat left and joined again in the
    same burst is heard."""
    producer, watcher = nodes(), nodes()
    heard = Heard()
    watcher.channels.attach(heard)
    joined = [uuid.uuid4().hex for _ in range(40)]
    left = [uuid.uuid4().hex for _ in range(10)]
    back = uuid.uuid4().hex
    await asyncio.gather(*(watcher.channels.join(chat) for chat in [*joined, *left, back]))
    await asyncio.gather(
        *(watcher.channels.leave(chat) for chat in [*left, back]), watcher.channels.join(back)
    )
    await asyncio.sleep(0.05)  # subscriptions take effect
    for chat in [*joined, *left, back]:
        producer.log.start(record(chat, "t"))
        producer.log.append(chat, "t", 0, frame(0))
    expected = {*joined, back}
    await heard.until(lambda: {chat for chat, *_ in heard.frames} >= expected)
    await producer.log.flush()
    await asyncio.sleep(0.1)
    assert sorted(chat for chat, *_ in heard.frames) == sorted(expected)


@pytest.mark.parametrize("limit", [1, 3])
async def test_connections_are_counted_across_processes(
    nodes: Callable[[], Node], limit: int
) -> None:
    one, two = nodes().counter, nodes().counter
    user = uuid.uuid4().hex
    admitted = [await (one if i % 2 else two).acquire(user, f"s{i}", limit) for i in range(limit)]
    assert admitted == [True] * limit
    assert not await one.acquire(user, "over", limit)
    assert not await two.acquire(user, "over", limit)
    await one.release(user, "s0")
    assert await two.acquire(user, "again", limit)
    assert await one.acquire(uuid.uuid4().hex, "other user", limit)


async def test_a_burst_of_connections_is_counted_exactly(nodes: Callable[[], Node]) -> None:
    """Concurrent acquires (joined into pipelines by the Redis adapter) admit exactly up to the
    limit per user, across processes, and a burst of releases frees every slot."""
    one, two = nodes().counter, nodes().counter
    users = [uuid.uuid4().hex for _ in range(5)]
    limit = 7
    asked = [(user, f"s{n}") for user in users for n in range(limit + 4)]

    async with asyncio.timeout(10):
        admitted = await asyncio.gather(
            *(
                (one if n % 2 else two).acquire(user, slot, limit)
                for n, (user, slot) in enumerate(asked)
            )
        )
    granted = [pair for pair, ok in zip(asked, admitted, strict=True) if ok]
    for user in users:
        assert sum(1 for owner, _ in granted if owner == user) == limit

    async with asyncio.timeout(10):
        await asyncio.gather(*(one.release(user, slot) for user, slot in granted))
        again = await asyncio.gather(*(two.acquire(user, "again", limit) for user in users))
    assert again == [True] * len(users)
