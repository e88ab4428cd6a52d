import asyncio
from collections.abc import AsyncIterator, Sequence
from itertools import pairwise
from typing import Any

import msgspec
import pytest

from app.domain.errors import InvalidGraph, ModelError
from app.domain.graph import (
    GraphRuntime,
    Incoming,
    NodeContext,
    NodeType,
    RuntimeServices,
    TurnInput,
    default_registry,
)
from app.domain.llm import ModelMessage
from app.testing import FakeChatModel, FakeTranslator


def node(node_id: str, node_type: str, **params: Any) -> dict[str, Any]:
    return {"id": node_id, "type": node_type, "params": params}


def chain(*nodes: dict[str, Any]) -> dict[str, Any]:
    ids = [n["id"] for n in nodes]
    edges = [{"source": s, "target": t} for s, t in pairwise(ids)]
    return {"nodes": list(nodes), "edges": edges}


def runtime(chat_model: Any = None, translator: Any = None) -> GraphRuntime:
    services = RuntimeServices(chat_model or FakeChatModel(), translator or FakeTranslator())
    return GraphRuntime(default_registry(), services)


async def answer(rt: GraphRuntime, graph: dict[str, Any], turn: TurnInput) -> list[str]:
    return [piece async for piece in rt.run(rt.compile(graph), turn)]


class GatedModel:
    """Yields its first piece, then waits for the test to open the gate; records closing."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.closed = False
        self.calls: list[dict[str, Any]] = []

    async def stream(
        self,
        messages: Sequence[ModelMessage],
        *,
        model: str | None = None,
        temperature: float | None = None,
    ) -> AsyncIterator[str]:
        self.calls.append({"messages": list(messages), "model": model, "temperature": temperature})
        try:
            yield "first "
            await self.gate.wait()
            yield "second"
        finally:
            self.closed = True


class FailingModel:
    async def stream(self, messages: Sequence[ModelMessage], **_: Any) -> AsyncIterator[str]:
        yield "partial "
        raise ModelError("the model provider answered HTTP 500")


class FailingTranslator:
    async def translate(self, text: str, target_language: str) -> str:
        raise ModelError("cannot reach the translation service")


async def test_scripted_model_streams_one_word_per_piece() -> None:
    graph = chain(
        node("in", "ChatInput"),
        node("bot", "ScriptedModel", reply="Hello brave world"),
        node("out", "ChatOutput"),
    )
    assert await answer(runtime(), graph, TurnInput("ignored")) == ["Hello ", "brave ", "world"]


async def test_scripted_model_without_reply_echoes_its_input() -> None:
    graph = chain(node("in", "ChatInput"), node("bot", "ScriptedModel"), node("out", "ChatOutput"))
    assert await answer(runtime(), graph, TurnInput("  ni  hao ")) == ["  ni  ", "hao "]


async def test_nodes_run_after_their_sources_and_only_on_the_way_to_the_output() -> None:
    seen: list[tuple[str, str]] = []

    async def record(params: Any, incoming: Incoming, context: NodeContext) -> AsyncIterator[str]:
        text = await incoming.text()
        seen.append((context.node_id, text))
        yield f"{context.node_id}({text})"

    registry = default_registry()
    registry.register(NodeType("Record", msgspec.Struct, record))
    rt = GraphRuntime(registry, RuntimeServices(FakeChatModel(), FakeTranslator()))
    graph = {
        "nodes": [
            node("out", "ChatOutput"),
            node("join", "Record"),
            node("left", "Record"),
            node("in", "ChatInput"),
            node("right", "Record"),
            node("unused", "Record"),
        ],
        "edges": [
            {"source": "in", "target": "left"},
            {"source": "in", "target": "right"},
            {"source": "left", "target": "join"},
            {"source": "right", "target": "join"},
            {"source": "join", "target": "out"},
            {"source": "in", "target": "unused"},
        ],
    }

    pieces = [p async for p in rt.run(rt.compile(graph), TurnInput("hi"))]

    assert "".join(pieces) == "join(left(hi)\n\nright(hi))"
    assert seen == [("left", "hi"), ("right", "hi"), ("join", "left(hi)\n\nright(hi)")]


async def test_a_node_feeding_two_nodes_runs_once() -> None:
    model = FakeChatModel(["Hel", "lo"])
    translator = FakeTranslator()
    graph = {
        "nodes": [
            node("in", "ChatInput"),
            node("model", "ChatModel"),
            node("zh", "Translate", target_language="zh"),
            node("out", "ChatOutput"),
        ],
        "edges": [
            {"source": "in", "target": "model"},
            {"source": "model", "target": "out"},
            {"source": "model", "target": "zh"},
            {"source": "zh", "target": "out"},
        ],
    }
    pieces = await answer(runtime(model, translator), graph, TurnInput("hi"))
    assert pieces == ["Hel", "lo", "\n\n", "translated[zh]: Hello"]
    assert len(model.calls) == 1
    assert translator.calls == [("Hello", "zh")]


async def test_a_model_streams_through_to_the_output_piece_by_piece() -> None:
    model = GatedModel()
    rt = runtime(model)
    graph = chain(node("in", "ChatInput"), node("model", "ChatModel"), node("out", "ChatOutput"))
    pieces = rt.run(rt.compile(graph), TurnInput("hi"))

    # The first piece arrives while the model is still answering.
    assert await anext(pieces) == "first "
    model.gate.set()
    assert [p async for p in pieces] == ["second"]


async def test_chat_model_gets_system_history_and_prompt() -> None:
    model = GatedModel()
    model.gate.set()
    history = [ModelMessage("user", "Who are you?"), ModelMessage("assistant", "A bot.")]
    graph = chain(
        node("in", "ChatInput"),
        node("prompt", "PromptTemplate", template="Question: {input}", system="Be brief."),
        node("model", "ChatModel", model="small", temperature=0.5),
        node("out", "ChatOutput"),
    )
    pieces = await answer(runtime(model), graph, TurnInput("Why?", history=history))

    assert pieces == ["first ", "second"]
    assert model.calls == [
        {
            "messages": [
                ModelMessage("system", "Be brief."),
                *history,
                ModelMessage("user", "Question: Why?"),
            ],
            "model": "small",
            "temperature": 0.5,
        }
    ]


async def test_chat_model_system_param_wins_over_the_template() -> None:
    model = FakeChatModel()
    graph = chain(
        node("in", "ChatInput"),
        node("prompt", "PromptTemplate", template="{input}", system="from template"),
        node("model", "ChatModel", system="from model"),
        node("out", "ChatOutput"),
    )
    await answer(runtime(model), graph, TurnInput("hi"))
    assert model.calls == [[ModelMessage("system", "from model"), ModelMessage("user", "hi")]]


async def test_prompt_template_fills_input_history_and_inputs_only() -> None:
    graph = chain(
        node("in", "ChatInput"),
        node(
            "prompt",
            "PromptTemplate",
            template="{history}|{input}|{lang}|{missing}|{input.__class__}|{{literal}}",
        ),
        node("out", "ChatOutput"),
    )
    turn = TurnInput(
        "hi",
        inputs={"input": "hi", "lang": "fr"},
        history=[ModelMessage("user", "a"), ModelMessage("assistant", "b")],
    )
    pieces = await answer(runtime(), graph, turn)
    assert pieces == ["user: a\nassistant: b|hi|fr|{missing}|{input.__class__}|{literal}"]


async def test_translate_node_translates_the_whole_text() -> None:
    translator = FakeTranslator()
    graph = chain(
        node("in", "ChatInput"),
        node("bot", "ScriptedModel", reply="Good morning"),
        node("zh", "Translate", target_language="zh"),
        node("out", "ChatOutput"),
    )
    pieces = await answer(runtime(translator=translator), graph, TurnInput("hi"))
    assert pieces == ["translated[zh]: Good morning"]
    assert translator.calls == [("Good morning", "zh")]


async def test_a_compiled_graph_serves_many_turns() -> None:
    rt = runtime()
    compiled = rt.compile(
        chain(node("in", "ChatInput"), node("bot", "ScriptedModel"), node("out", "ChatOutput"))
    )
    assert [p async for p in rt.run(compiled, TurnInput("one"))] == ["one"]
    assert [p async for p in rt.run(compiled, TurnInput("two words"))] == ["two ", "words"]


def test_compile_rejects_an_invalid_graph_with_every_problem() -> None:
    with pytest.raises(InvalidGraph) as raised:
        runtime().compile(chain(node("in", "ChatInput"), node("x", "ChatModel", temperature=7)))
    assert len(raised.value.problems) == 2
    assert "node 'x'" in raised.value.problems[0]


async def test_cancelling_the_turn_stops_a_delayed_scripted_model_promptly() -> None:
    rt = runtime()
    graph = chain(
        node("in", "ChatInput"),
        node("bot", "ScriptedModel", reply="one two three four five six", delay=0.05),
        node("out", "ChatOutput"),
    )
    pieces = rt.run(rt.compile(graph), TurnInput("hi"))
    received: list[str] = []
    first = asyncio.Event()

    async def consume() -> None:
        async for piece in pieces:
            received.append(piece)
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), timeout=1)
    task.cancel()
    async with asyncio.timeout(0.2):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert received == ["one "]
    assert pieces.ag_frame is None  # type: ignore[attr-defined]  # the generator is finished


async def test_cancelling_the_turn_closes_the_model_stream() -> None:
    model = GatedModel()
    rt = runtime(model)
    graph = chain(node("in", "ChatInput"), node("model", "ChatModel"), node("out", "ChatOutput"))
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in rt.run(rt.compile(graph), TurnInput("hi")):
            started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), timeout=1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=1)
    assert model.closed


async def test_cancelling_while_a_node_joins_the_model_text_closes_the_model_stream() -> None:
    model = GatedModel()
    rt = runtime(model)
    graph = chain(
        node("in", "ChatInput"),
        node("model", "ChatModel"),
        node("en", "Translate", target_language="en"),
        node("out", "ChatOutput"),
    )
    # The model feeds a Translate, so the answer waits for the whole model text.
    pieces = rt.run(rt.compile(graph), TurnInput("hi"))

    async def first_piece() -> str:
        return await anext(pieces)

    reading = asyncio.create_task(first_piece())
    await asyncio.sleep(0.01)
    assert not reading.done()
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    assert model.closed


async def test_closing_the_answer_early_closes_the_model_stream() -> None:
    model = GatedModel()
    rt = runtime(model)
    pieces = rt.run(
        rt.compile(
            chain(node("in", "ChatInput"), node("model", "ChatModel"), node("out", "ChatOutput"))
        ),
        TurnInput("hi"),
    )
    assert await anext(pieces) == "first "
    await pieces.aclose()  # type: ignore[attr-defined]
    assert model.closed


async def test_a_model_failure_surfaces_as_model_error() -> None:
    rt = runtime(FailingModel())
    graph = chain(node("in", "ChatInput"), node("model", "ChatModel"), node("out", "ChatOutput"))
    received: list[str] = []
    with pytest.raises(ModelError, match="HTTP 500"):
        async for piece in rt.run(rt.compile(graph), TurnInput("hi")):
            received.append(piece)
    assert received == ["partial "]


async def test_a_translator_failure_surfaces_as_model_error() -> None:
    rt = runtime(translator=FailingTranslator())
    graph = chain(
        node("in", "ChatInput"),
        node("zh", "Translate", target_language="zh"),
        node("out", "ChatOutput"),
    )
    with pytest.raises(ModelError, match="translation service"):
        await answer(rt, graph, TurnInput("hi"))


async def test_a_chain_reads_its_answer_straight_from_the_model_and_a_fork_does_not() -> None:
    rt = runtime(FakeChatModel(["Hel", "lo"]))
    linear = chain(node("in", "ChatInput"), node("model", "ChatModel"), node("out", "ChatOutput"))
    compiled = rt.compile(linear)
    assert compiled.direct_id == "model"  # ChatOutput is not run: the model's pieces are read
    assert [p async for p in rt.run(compiled, TurnInput("hi"))] == ["Hel", "lo"]
    fork = {
        "nodes": [
            node("in", "ChatInput"),
            node("model", "ChatModel"),
            node("zh", "Translate", target_language="zh"),
            node("out", "ChatOutput"),
        ],
        "edges": [
            {"source": "in", "target": "model"},
            {"source": "model", "target": "zh"},
            {"source": "zh", "target": "out"},
            {"source": "model", "target": "out"},
        ],
    }
    # The model feeds two nodes, ChatOutput two sources: both read through node outputs.
    assert rt.compile(fork).direct_id is None
    one_source_read_twice = {
        "nodes": [
            node("in", "ChatInput"),
            node("model", "ChatModel"),
            node("zh", "Translate", target_language="zh"),
            node("out", "ChatOutput"),
        ],
        "edges": [
            {"source": "in", "target": "model"},
            {"source": "model", "target": "zh"},
            {"source": "model", "target": "out"},
        ],
    }
    # zh feeds nothing on the way to the output, so it is dropped: the model feeds only out.
    assert rt.compile(one_source_read_twice).direct_id == "model"
