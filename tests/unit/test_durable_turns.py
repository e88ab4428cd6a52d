"""Turns across processes and failures, over fakes: two "processes" share one MemoryStore (as
two servers share Redis) and one FakeChatRepository (the database)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.domain.chats import TurnState
from app.infra.memory import MemoryStore
from app.testing import FakeChatRepository, FakeTransport
from tests.unit.chat_rig import Process, scripted

REPLY = "one two three four five six seven eight"


def two_processes(**options: Any) -> tuple[Process, Process]:
    store, chats = MemoryStore(), FakeChatRepository()
    return Process(store=store, chats=chats, **options), Process(
        store=store, chats=chats, **options
    )


def turn_frames(transport: FakeTransport) -> list[dict[str, object]]:
    return [f for f in transport.sent if "seq" in f and f.get("turn_id")]


def _first_seq(frame: dict[str, object]) -> int:
    return int(str(frame.get("first_seq", frame["seq"])))


def assert_whole_turn(transport: FakeTransport, status: str = "complete") -> dict[str, object]:
    frames = turn_frames(transport)
    # Each frame covers first_seq (a joined stream frame) to seq: every position once, in order.
    covered = [p for f in frames for p in range(_first_seq(f), int(str(f["seq"])) + 1)]
    assert covered == list(range(len(covered))), "every position once, in order"
    assert frames[0]["type"] == "begin" and frames[-1]["type"] == "close"
    end = frames[-2]
    assert end["type"] == "end" and end["status"] == status
    streamed = "".join(str(f["message"]) for f in frames if f["type"] == "stream")
    assert streamed == end["message"]
    return end


async def settle(*processes: Process) -> None:
    for process in processes:
        await process.settle()
    await asyncio.sleep(0.05)
    for process in processes:
        await process.settle()


async def test_every_socket_on_every_process_gets_every_frame_once() -> None:
    a, b = two_processes()
    asker, on_a = await a.connect(scripted(REPLY, delay=0.01))
    _, on_b = await b.connect(scripted(REPLY, delay=0.01))
    await asker.receive(b'{"inputs": {"input": "q"}}')
    await settle(a, b)
    end = assert_whole_turn(on_b)
    assert turn_frames(on_a) == turn_frames(on_b)
    assert end["message"] == REPLY and end["message_id"] == a.chats.messages[-1].id


async def test_lost_publications_are_filled_from_the_turn_log() -> None:
    a, b = two_processes()
    asker, _ = await a.connect(scripted(REPLY, delay=0.01))
    _, on_b = await b.connect(scripted(REPLY, delay=0.01))
    b.channels.drop_next = 3  # begin, start and a piece never reach b
    await asker.receive(b'{"inputs": {"input": "q"}}')
    await settle(a, b)
    assert_whole_turn(on_b)


async def test_a_reconnected_fanout_catches_up_from_the_log() -> None:
    a, b = two_processes()
    asker, _ = await a.connect(scripted(REPLY, delay=0.02))
    _, on_b = await b.connect(scripted(REPLY, delay=0.02))
    await asker.receive(b'{"inputs": {"input": "q"}}')
    await asyncio.sleep(0.05)
    b.channels.drop_next = 10_000  # b's fan-out is cut off...
    await asyncio.sleep(0.1)
    b.channels.drop_next = 0
    b.channels.resync()  # ...and reconnects
    await settle(a, b)
    assert_whole_turn(on_b)


async def test_resume_on_another_process_mid_turn_is_exact() -> None:
    a, b = two_processes()
    asker, on_a = await a.connect(scripted(REPLY, delay=0.03))
    await asker.receive(b'{"inputs": {"input": "q"}}')
    await asyncio.sleep(0.12)
    await asyncio.sleep(0)
    seen = turn_frames(on_a)
    assert 2 < len(seen) < 10
    await asker.close()
    last = seen[-1]
    resumed, on_b = await b.connect(scripted(REPLY, delay=0.03))
    await resumed.receive(
        b'{"action": "resume", "after_id": 0, "turn_id": "%s", "after_seq": %d}'
        % (str(last["turn_id"]).encode(), int(str(last["seq"])))
    )
    await settle(a, b)
    history, rest = on_b.sent[0], turn_frames(on_b)
    assert history["type"] == "history" and history["messages"] == []
    assert [f["seq"] for f in rest] == list(range(int(str(last["seq"])) + 1, len(seen) + len(rest)))
    whole = seen + rest
    assert "".join(str(f["message"]) for f in whole if f["type"] == "stream") == REPLY


async def test_resume_of_an_expired_log_is_unavailable() -> None:
    a = Process()
    session, transport = await a.connect(scripted(REPLY))
    await session.receive(
        b'{"action": "resume", "after_id": 0, "turn_id": "t-gone", "after_seq": 3}'
    )
    await a.settle()
    assert transport.sent[-1]["code"] == "resume_unavailable"


async def test_stop_reaches_the_process_running_the_turn() -> None:
    a, b = two_processes()
    asker, _ = await a.connect(scripted(REPLY, delay=0.05))
    stopper, on_b = await b.connect(scripted(REPLY, delay=0.05))
    await asker.receive(b'{"inputs": {"input": "q"}}')
    await asyncio.sleep(0.15)
    await stopper.receive(b'{"inputs": {"input": "another"}}')  # busy, across processes
    await stopper.receive(b'{"action": "stop"}')
    await settle(a, b)
    assert [f.get("code") for f in on_b.of_type("error")] == ["busy"]
    end = assert_whole_turn(on_b, "stopped")
    assert 0 < len(str(end["message"])) < len(REPLY)


async def test_a_dead_process_turn_is_finished_interrupted_by_a_live_one() -> None:
    a, b = two_processes(turn_lease=0.3)
    asker, _ = await a.connect(scripted(REPLY, delay=0.05))
    _, on_b = await b.connect(scripted(REPLY, delay=0.05))
    b.rooms.start()
    await asker.receive(b'{"inputs": {"input": "q"}}')
    await asyncio.sleep(0.2)
    # Process a dies: its turn stops, its lease is no longer renewed, nothing more is logged.
    a.rooms.keeper.abandon("c1", next(iter(a.rooms.keeper.holds().values())))
    for task in a.rooms.running_turns():
        task.cancel()
    async with asyncio.timeout(5):
        while not on_b.of_type("close"):
            await asyncio.sleep(0.05)
    end = assert_whole_turn(on_b, "interrupted")
    answer = b.chats.messages[-1]
    assert (answer.category, answer.status, answer.message) == (
        "answer",
        "interrupted",
        end["message"],
    )
    assert 0 < len(answer.message) < len(REPLY)
    # The chat is free again: a new turn runs (on b).
    asker_b, on_b2 = await b.connect(scripted(REPLY))
    await asker_b.receive(b'{"inputs": {"input": "again"}}')
    await settle(b)
    assert on_b2.of_type("end")[-1]["status"] == "complete"
    await b.container.aclose()


class FlakyChats(FakeChatRepository):
    """The database goes away when the answer is stored, for ``outage`` stores."""

    def __init__(self, outage: int) -> None:
        super().__init__()
        self.outage = outage

    async def add_message(self, message: Any) -> Any:
        if message.category == "answer" and self.outage > 0:
            self.outage -= 1
            self.down = True
            try:
                return await super().add_message(message)
            finally:
                self.down = False
        return await super().add_message(message)


async def test_end_comes_only_once_the_answer_is_stored() -> None:
    chats = FlakyChats(outage=3)
    a = Process(chats=chats, store_retry=5.0)
    session, transport = await a.connect(scripted(REPLY))
    await session.receive(b'{"inputs": {"input": "q"}}')
    await a.settle()
    assert transport.of_type("error") == []  # never turn_failed then complete
    end = assert_whole_turn(transport, "complete")
    assert end["message_id"] == chats.messages[-1].id and chats.messages[-1].message == REPLY


async def test_when_storing_gives_up_end_says_failed_and_the_answer_is_stored_later() -> None:
    chats = FlakyChats(outage=1000)
    a = Process(chats=chats, store_retry=0.3, turn_lease=0.3)
    session, transport = await a.connect(scripted(REPLY))
    await session.receive(b'{"inputs": {"input": "q"}}')
    await a.settle()
    assert [e["code"] for e in transport.of_type("error")] == ["turn_failed"]
    end = assert_whole_turn(transport, "failed")
    assert end["message_id"] is None
    assert [m.category for m in chats.messages] == ["question"]
    chats.outage = 0  # the database is back: the sweeper stores the failed answer
    a.rooms.start()
    async with asyncio.timeout(5):
        while len(chats.messages) < 2:
            await asyncio.sleep(0.05)
    answer = chats.messages[-1]
    assert (answer.category, answer.status, answer.message) == ("answer", "failed", REPLY)
    record = await a.container.rooms._log.current("c1")  # type: ignore[attr-defined]
    assert record is not None and record.state is TurnState.ENDED and record.answer_stored
    await a.container.aclose()


async def test_shutdown_past_the_grace_stores_the_partial_answer_interrupted() -> None:
    a = Process()
    session, transport = await a.connect(scripted(REPLY, delay=0.1))
    await session.receive(b'{"inputs": {"input": "q"}}')
    await asyncio.sleep(0.25)
    await a.rooms.drain(0.05)
    await a.settle()
    end = assert_whole_turn(transport, "interrupted")
    assert (
        a.chats.messages[-1].status == "interrupted"
        and a.chats.messages[-1].message == end["message"]
    )


async def test_a_question_left_unanswered_is_answered_when_a_process_starts() -> None:
    a = Process()
    session, _ = await a.connect(scripted(REPLY, delay=0.1))
    await session.receive(b'{"inputs": {"input": "q"}}')
    await asyncio.sleep(0.15)
    for task in a.rooms.running_turns():
        task.cancel()  # the process "crashes": its in-process log and lease die with it
    await asyncio.sleep(0.05)
    survivor = a.chats
    fresh = Process(chats=survivor, turn_lease=0.05)  # a new process: new memory, same database
    await asyncio.sleep(0.2)  # older than a few lease times
    assert await fresh.rooms.recovery.sweep_unanswered() == 1
    answer = survivor.messages[-1]
    assert (answer.category, answer.status) == ("answer", "interrupted")


async def test_a_slow_consumer_is_closed_4008_without_slowing_the_others() -> None:
    a = Process(send_buffer=2000)
    # What waits is joined into one stream frame (protocol 1.2), which weighs its text: 100
    # pieces of 32 characters pass the 2000 bytes wherever they are joined.
    long_reply = scripted(" ".join(["word" * 8] * 100), delay=0.002)
    fast_session, fast = await a.connect(long_reply)
    _, slow = await a.connect(long_reply)
    blocked = asyncio.Event()

    async def never_drains(data: bytes) -> None:
        await blocked.wait()

    slow.send = never_drains  # type: ignore[method-assign]
    await fast_session.receive(b'{"inputs": {"input": "q"}}')
    await a.settle()
    assert slow.closed_with == (4008, "slow consumer")
    assert_whole_turn(fast)


@pytest.mark.parametrize("after_seq", [-1, 0, 3])
async def test_resume_on_the_same_process_after_the_turn_ended(after_seq: int) -> None:
    a = Process()
    session, transport = await a.connect(scripted(REPLY))
    await session.receive(b'{"inputs": {"input": "q"}}')
    await a.settle()
    frames = turn_frames(transport)
    turn_id = str(frames[0]["turn_id"])
    other, again = await a.connect(scripted(REPLY))
    await other.receive(
        b'{"action": "resume", "after_id": 0, "turn_id": "%s", "after_seq": %d}'
        % (turn_id.encode(), after_seq)
    )
    await a.settle()
    assert again.sent[0]["messages"] == []  # the turn's rows come as its frames
    assert turn_frames(again) == frames[after_seq + 1 :]


async def test_the_next_message_right_after_close_is_not_busy() -> None:
    a = Process()
    session, transport = await a.connect(scripted("a b"))
    for round_ in range(3):
        await session.receive(b'{"inputs": {"input": "q%d"}}' % round_)
        async with asyncio.timeout(5):
            while len(transport.of_type("close")) <= round_:
                await asyncio.sleep(0)  # the very next loop turn after close arrives
    await a.settle()
    assert transport.of_type("error") == []
    assert [f["status"] for f in transport.of_type("end")] == ["complete"] * 3
