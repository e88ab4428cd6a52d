"""The turn state machine of the chat feature, over fake ports and fake transports."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from app.domain.admission import Admission
from app.domain.chat import ChatFeature
from app.domain.connection import Connection
from app.domain.dispatcher import FrameDispatcher
from app.domain.errors import ModelError
from app.domain.flows import Flow, FlowStatus
from app.domain.graph import GraphRuntime, RuntimeServices, default_registry
from app.domain.llm import ModelMessage
from app.domain.users import User
from app.infra.bus.memory import InProcessChatBus
from tests.fakes import (
    FakeChatModel,
    FakeChatRepository,
    FakeTokenVerifier,
    FakeTranslator,
    FakeTransport,
)

ALICE = User(id="alice")


def graph(model: dict[str, Any]) -> dict[str, Any]:
    return {
        "nodes": [
            {"id": "in", "type": "ChatInput", "params": {}},
            model,
            {"id": "out", "type": "ChatOutput", "params": {}},
        ],
        "edges": [{"source": "in", "target": "m"}, {"source": "m", "target": "out"}],
    }


def scripted(reply: str, delay: float = 0.0) -> dict[str, Any]:
    return graph({"id": "m", "type": "ScriptedModel", "params": {"reply": reply, "delay": delay}})


LLM = graph({"id": "m", "type": "ChatModel", "params": {}})


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


class Rig:
    def __init__(self, chat_model: Any = None, turn_timeout: float = 5.0) -> None:
        self.chats = FakeChatRepository()
        self.model = chat_model or FakeChatModel(["Hi", " there"])
        runtime = GraphRuntime(
            default_registry(), RuntimeServices(chat_model=self.model, translator=FakeTranslator())
        )
        self.feature = ChatFeature(
            chats=self.chats,
            bus=InProcessChatBus(),
            runtime=runtime,
            history_turns=2,
            turn_timeout=turn_timeout,
        )

    async def connect(
        self, graph: dict[str, Any], chat_id: str | None = "c1"
    ) -> tuple[FrameDispatcher, FakeTransport, Connection]:
        flow = Flow(id="f1", name="f", owner_id="alice", status=FlowStatus.ONLINE, graph=graph)
        admission = Admission(
            user=ALICE, flow=flow, feature="chat", graph=graph, chat_id=chat_id, version_id=None
        )
        transport = FakeTransport()
        connection = Connection(admission, transport)
        await self.feature.opened(connection)
        return (
            FrameDispatcher(connection, self.feature, FakeTokenVerifier(), 1000),
            transport,
            connection,
        )

    async def settle(self) -> None:
        for _ in range(200):
            if not self.feature.running_turns():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("turn did not end")


async def test_full_turn_frames_and_persistence() -> None:
    rig = Rig()
    dispatcher, transport, _ = await rig.connect(scripted("one two three"))
    await dispatcher.dispatch(b'{"inputs": {"input": "q1"}}')
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

    rig = Rig(chat_model=Watching())
    dispatcher, _, _ = await rig.connect(LLM)
    await dispatcher.dispatch(b'{"inputs": {"input": "q"}}')
    await rig.settle()
    assert seen == [1]


async def test_model_gets_the_last_turns_as_memory() -> None:
    rig = Rig()
    dispatcher, _, _ = await rig.connect(LLM)
    for text in ("first", "second", "third"):
        await dispatcher.dispatch(f'{{"inputs": {{"input": "{text}"}}}}'.encode())
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
    rig = Rig()
    dispatcher, transport, _ = await rig.connect(scripted("a b c d e f g h i j", delay=0.05))
    await dispatcher.dispatch(b'{"inputs": {"input": "q"}}')
    await asyncio.sleep(0.18)
    await dispatcher.dispatch(b'{"action": "stop"}')
    await rig.settle()
    end = transport.of_type("end")[0]
    assert end["status"] == "stopped"
    answer = rig.chats.messages[-1]
    assert (answer.message, answer.status) == (end["message"], "stopped")
    assert 0 < len(answer.message) < len("a b c d e f g h i j")
    await dispatcher.dispatch(b'{"action": "stop"}')
    assert transport.sent[-1]["code"] == "not_running"


async def test_busy_and_idempotent_client_msg_id() -> None:
    rig = Rig()
    dispatcher, transport, _ = await rig.connect(scripted("x y", delay=0.05))
    await dispatcher.dispatch(b'{"inputs": {"input": "q"}, "client_msg_id": "m1"}')
    await dispatcher.dispatch(b'{"inputs": {"input": "q"}, "client_msg_id": "m1"}')  # joins
    await dispatcher.dispatch(b'{"inputs": {"input": "other"}}')  # busy
    await rig.settle()
    assert [f.get("code") for f in transport.of_type("error")] == ["busy"]
    assert len(transport.of_type("begin")) == 1
    transport.sent.clear()
    await dispatcher.dispatch(b'{"inputs": {"input": "q"}, "client_msg_id": "m1"}')  # replay
    assert [f["type"] for f in transport.sent] == ["begin", "end", "close"]
    assert transport.sent[1]["message"] == "x y"
    assert len(rig.chats.messages) == 2


async def test_turn_outlives_the_last_connection_but_debug_turns_do_not() -> None:
    rig = Rig()
    _, _, conn = await rig.connect(scripted("a b c d", delay=0.03))
    dispatcher = FrameDispatcher(conn, rig.feature, FakeTokenVerifier(), 1000)
    await dispatcher.dispatch(b'{"inputs": {"input": "q"}}')
    await rig.feature.closed(conn)
    await rig.settle()
    assert rig.chats.messages[-1].message == "a b c d"

    debug_dispatcher, _, debug_conn = await rig.connect(
        scripted("a b c d", delay=0.05), chat_id=None
    )
    await debug_dispatcher.dispatch(b'{"inputs": {"input": "q"}}')
    await asyncio.sleep(0.01)
    tasks = rig.feature.running_turns()
    await rig.feature.closed(debug_conn)
    await asyncio.wait(tasks, timeout=2)
    assert all(t.cancelled() for t in tasks)
    assert len(rig.chats.messages) == 2  # debug stored nothing


async def test_model_failure_ends_the_turn_failed() -> None:
    rig = Rig(chat_model=FailingModel())
    dispatcher, transport, _ = await rig.connect(LLM)
    await dispatcher.dispatch(b'{"inputs": {"input": "q"}}')
    await rig.settle()
    errors = transport.of_type("error")
    assert [e["code"] for e in errors] == ["turn_failed"]
    assert "500" in str(errors[0]["message"])
    end = transport.of_type("end")[0]
    assert (end["status"], end["message"]) == ("failed", "partial ")
    assert rig.chats.messages[-1].status == "failed"
    assert transport.sent[-1]["type"] == "close"


async def test_turn_duration_limit() -> None:
    rig = Rig(turn_timeout=0.1)
    dispatcher, transport, _ = await rig.connect(scripted("a b c d e f", delay=0.05))
    await dispatcher.dispatch(b'{"inputs": {"input": "q"}}')
    await rig.settle()
    assert transport.of_type("end")[0]["status"] == "failed"
    assert "longer than 0.1 s" in str(transport.of_type("error")[0]["message"])


async def test_two_connections_share_frames_and_stop() -> None:
    rig = Rig()
    d1, t1, _ = await rig.connect(scripted("a b c d e f g h", delay=0.05))
    d2, t2, _ = await rig.connect(scripted("a b c d e f g h", delay=0.05))
    await d1.dispatch(b'{"inputs": {"input": "q"}}')
    await asyncio.sleep(0.12)
    await d2.dispatch(b'{"action": "stop"}')
    await rig.settle()
    assert t1.sent == t2.sent
    assert t1.of_type("end")[0]["status"] == "stopped"


@pytest.mark.parametrize("frame", [b'{"inputs": {"input": ""}}', b'{"inputs": {"input": 5}}'])
async def test_empty_input_is_an_invalid_message(frame: bytes) -> None:
    rig = Rig()
    dispatcher, transport, _ = await rig.connect(scripted("x"))
    await dispatcher.dispatch(frame)
    assert transport.sent[-1]["code"] == "invalid_message"
    assert rig.feature.running_turns() == []


async def test_resume_sends_what_was_missed_and_the_live_turn() -> None:
    rig = Rig()
    d1, _, _ = await rig.connect(scripted("a b c d e f g h", delay=0.05))
    await d1.dispatch(b'{"inputs": {"input": "q"}}')
    await asyncio.sleep(0.13)
    d2, t2, _ = await rig.connect(scripted("a b c d e f g h", delay=0.05))
    await d2.dispatch(b'{"action": "resume", "after_id": 0}')
    history = t2.sent[0]
    assert history["type"] == "history" and [m["message"] for m in history["messages"]] == ["q"]
    assert [f["type"] for f in t2.sent[1:4]] == ["begin", "start", "stream"]
    await rig.settle()
    assert t2.sent[-2]["message"] == "a b c d e f g h"
    answer_so_far = t2.sent[3]["message"] + "".join(
        f["message"] for f in t2.sent[4:] if f["type"] == "stream"
    )
    assert answer_so_far == "a b c d e f g h"


async def test_shutdown_lets_running_turns_finish_and_be_stored() -> None:
    rig = Rig()
    dispatcher, _, conn = await rig.connect(scripted("a b c", delay=0.05))
    await dispatcher.dispatch(b'{"inputs": {"input": "q"}}')
    await rig.feature.closed(conn)
    await rig.feature.aclose()
    assert (rig.chats.messages[-1].message, rig.chats.messages[-1].status) == ("a b c", "complete")


@pytest.mark.parametrize("piece", ["plain ", 'quote " and \\ back', "\x00nul", "中文 ", "\n\t", ""])
def test_spliced_stream_frames_equal_encoded_ones(piece: str) -> None:
    from app.domain.chat.turn import TurnFrames

    framer = TurnFrames(flow_id="f", chat_id="c\x00", user_id="u", turn_id="t")
    assert framer.stream(piece) == framer.frame("stream", piece)
