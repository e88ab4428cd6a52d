"""The turn state machine of the chat feature, over fake ports and fake transports."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from app.domain.errors import ModelError
from app.domain.llm import ModelMessage
from app.testing import FakeChatModel, FakeTransport
from tests.unit.chat_rig import LLM, Process, scripted


class FailingModel:
    async def stream(
        self,
        messages: Sequence[ModelMessage],
        *,
        model: str | None = None,
        temperature: float | None = None,
    ) -> AsyncIterator[str]:
        yield "partial "
        raise ModelError("the model's provider answered 500")


async def test_full_turn_frames_and_persistence() -> None:
    rig = Process()
    dispatcher, transport = await rig.connect(scripted("one two three"))
    await dispatcher.receive(b'{"inputs": {"input": "q1"}}')
    await rig.settle()
    types = [f["type"] for f in transport.sent]
    assert types == ["begin", "start", "stream", "stream", "stream", "end", "close"]
    stored = rig.chats.messages
    assert [(m.category, m.message, m.status) for m in stored] == [
        ("question", "q1", None),
        ("answer", "one two three", "complete"),
    ]
    assert transport.sent[0]["message_id"] == stored[0].id
    assert transport.sent[-2]["message_id"] == stored[1].id
    assert {f["turn_id"] for f in transport.sent} == {stored[0].turn_id}


async def test_question_is_stored_before_the_model_is_called() -> None:
    seen: list[int] = []

    class Watching(FakeChatModel):
        async def stream(self, messages: Any, **kw: Any) -> AsyncIterator[str]:
            seen.append(len(rig.chats.messages))
            yield "ok"

    rig = Process(chat_model=Watching())
    dispatcher, _ = await rig.connect(LLM)
    await dispatcher.receive(b'{"inputs": {"input": "q"}}')
    await rig.settle()
    assert seen == [1]


async def test_model_gets_the_last_turns_as_memory() -> None:
    rig = Process()
    dispatcher, _ = await rig.connect(LLM)
    for text in ("first", "second", "third"):
        await dispatcher.receive(f'{{"inputs": {{"input": "{text}"}}}}'.encode())
        await rig.settle()
    last_call = rig.model.calls[-1]
    contents = [(m.role, m.content) for m in last_call]
    # history_turns=2: the two previous turns, oldest first, then the new question.
    assert contents == [
        ("user", "first"),
        ("assistant", "Hi there"),
        ("user", "second"),
        ("assistant", "Hi there"),
        ("user", "third"),
    ]


async def test_stop_cancels_and_stores_the_partial_answer() -> None:
    rig = Process()
    dispatcher, transport = await rig.connect(scripted("a b c d e f g h i j", delay=0.05))
    await dispatcher.receive(b'{"inputs": {"input": "q"}}')
    await asyncio.sleep(0.18)
    await dispatcher.receive(b'{"action": "stop"}')
    await rig.settle()
    end = transport.of_type("end")[0]
    assert end["status"] == "stopped"
    answer = rig.chats.messages[-1]
    assert (answer.message, answer.status) == (end["message"], "stopped")
    assert 0 < len(answer.message) < len("a b c d e f g h i j")
    await dispatcher.receive(b'{"action": "stop"}')
    assert transport.sent[-1]["code"] == "not_running"


async def test_busy_and_idempotent_client_msg_id() -> None:
    rig = Process()
    dispatcher, transport = await rig.connect(scripted("x y", delay=0.05))
    await dispatcher.receive(b'{"inputs": {"input": "q"}, "client_msg_id": "m1"}')
    await dispatcher.receive(b'{"inputs": {"input": "q"}, "client_msg_id": "m1"}')  # joins
    await dispatcher.receive(b'{"inputs": {"input": "other"}}')  # busy
    await rig.settle()
    assert [f.get("code") for f in transport.of_type("error")] == ["busy"]
    assert len(transport.of_type("begin")) == 1
    transport.sent.clear()
    await dispatcher.receive(b'{"inputs": {"input": "q"}, "client_msg_id": "m1"}')  # replay
    assert [f["type"] for f in transport.sent] == ["begin", "end", "close"]
    assert transport.sent[1]["message"] == "x y"
    assert len(rig.chats.messages) == 2


async def test_turn_outlives_the_last_connection_but_debug_turns_do_not() -> None:
    rig = Process()
    dispatcher, _ = await rig.connect(scripted("a b c d", delay=0.03))
    await dispatcher.receive(b'{"inputs": {"input": "q"}}')
    await dispatcher.close()
    await rig.settle()
    assert rig.chats.messages[-1].message == "a b c d"

    debug_dispatcher, _ = await rig.connect(scripted("a b c d", delay=0.05), chat_id=None)
    await debug_dispatcher.receive(b'{"inputs": {"input": "q"}}')
    await asyncio.sleep(0.01)
    tasks = rig.rooms.running_turns()
    await debug_dispatcher.close()
    await asyncio.wait(tasks, timeout=2)
    assert all(t.cancelled() for t in tasks)
    assert len(rig.chats.messages) == 2  # debug stored nothing


async def test_model_failure_ends_the_turn_failed() -> None:
    rig = Process(chat_model=FailingModel())
    dispatcher, transport = await rig.connect(LLM)
    await dispatcher.receive(b'{"inputs": {"input": "q"}}')
    await rig.settle()
    errors = transport.of_type("error")
    assert [e["code"] for e in errors] == ["turn_failed"]
    assert "500" in str(errors[0]["message"])
    end = transport.of_type("end")[0]
    assert (end["status"], end["message"]) == ("failed", "partial ")
    assert rig.chats.messages[-1].status == "failed"
    assert transport.sent[-1]["type"] == "close"


async def test_turn_duration_limit() -> None:
    rig = Process(turn_timeout=0.1)
    dispatcher, transport = await rig.connect(scripted("a b c d e f", delay=0.05))
    await dispatcher.receive(b'{"inputs": {"input": "q"}}')
    await rig.settle()
    assert transport.of_type("end")[0]["status"] == "failed"
    assert "longer than 0.1 s" in str(transport.of_type("error")[0]["message"])


async def test_two_connections_share_frames_and_stop() -> None:
    rig = Process()
    d1, t1 = await rig.connect(scripted("a b c d e f g h", delay=0.05))
    d2, t2 = await rig.connect(scripted("a b c d e f g h", delay=0.05))
    await d1.receive(b'{"inputs": {"input": "q"}}')
    await asyncio.sleep(0.12)
    await d2.receive(b'{"action": "stop"}')
    await rig.settle()
    assert t1.sent == t2.sent
    assert t1.of_type("end")[0]["status"] == "stopped"


@pytest.mark.parametrize("frame", [b'{"inputs": {"input": ""}}', b'{"inputs": {"input": 5}}'])
async def test_empty_input_is_an_invalid_message(frame: bytes) -> None:
    rig = Process()
    dispatcher, transport = await rig.connect(scripted("x"))
    await dispatcher.receive(frame)
    assert transport.sent[-1]["code"] == "invalid_message"
    assert rig.rooms.running_turns() == []


async def test_resume_sends_what_was_missed_and_the_live_turn() -> None:
    rig = Process()
    d1, _ = await rig.connect(scripted("a b c d e f g h", delay=0.05))
    await d1.receive(b'{"inputs": {"input": "q"}}')
    await asyncio.sleep(0.13)
    d2, t2 = await rig.connect(scripted("a b c d e f g h", delay=0.05))
    await d2.receive(b'{"action": "resume", "after_id": 0}')
    await rig.settle()
    history = t2.sent[0]
    # The live turn's own question comes as its begin frame, not twice.
    assert history["type"] == "history" and history["messages"] == []
    turn = t2.sent[1:]
    assert [f["seq"] for f in turn] == list(range(len(turn)))  # every frame once, in order
    assert [f["type"] for f in turn[:2]] == ["begin", "start"]
    assert turn[-2]["type"] == "end" and turn[-2]["message"] == "a b c d e f g h"
    streamed = "".join(f["message"] for f in turn if f["type"] == "stream")
    assert streamed == "a b c d e f g h"


async def test_shutdown_lets_running_turns_finish_and_be_stored() -> None:
    rig = Process()
    dispatcher, _ = await rig.connect(scripted("a b c", delay=0.05))
    await dispatcher.receive(b'{"inputs": {"input": "q"}}')
    await dispatcher.close()
    await rig.container.aclose()
    assert (rig.chats.messages[-1].message, rig.chats.messages[-1].status) == ("a b c", "complete")


@pytest.mark.parametrize("piece", ["plain ", 'quote " and \\ back', "\x00nul", "中文 ", "\n\t", ""])
def test_spliced_stream_frames_equal_encoded_ones(piece: str) -> None:
    from app.domain.chat.turn_frames import TurnFrames

    spliced = TurnFrames(flow_id="f", chat_id="c\x00", user_id="u", turn_id="t", next_seq=7)
    encoded = TurnFrames(flow_id="f", chat_id="c\x00", user_id="u", turn_id="t", next_seq=7)
    assert spliced.stream(piece) == encoded.frame("stream", piece)
    assert spliced.stream(piece) == encoded.frame("stream", piece)  # seq 8 both


async def test_a_turn_whose_model_has_every_piece_at_once_lets_other_chats_start() -> None:
    process = Process()
    reply = " ".join(f"w{i}" for i in range(200))  # delay 0: every piece at once
    order: list[tuple[str, str]] = []

    class Recording(FakeTransport):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

        async def send(self, data: bytes) -> None:
            await super().send(data)
            order.append((self.name, str(self.sent[-1].get("type"))))

    first, _ = await process.connect(scripted(reply), chat_id="c1")
    second, _ = await process.connect(scripted(reply), chat_id="c2")
    first.connection.transport = Recording("c1")
    second.connection.transport = Recording("c2")
    await first.receive(b'{"inputs": {"input": "q"}}')
    await second.receive(b'{"inputs": {"input": "q"}}')
    await process.settle()
    assert order.count(("c1", "stream")) == order.count(("c2", "stream")) == 200
    # The second chat's first piece is written long before the first chat's last one.
    second_first = order.index(("c2", "stream"))
    first_last = len(order) - 1 - order[::-1].index(("c1", "stream"))
    assert second_first < first_last - 100
