"""The Shout node type, through app.testing: in a graph run as a turn runs it."""

from __future__ import annotations

import asyncio

from flowgate_sentiment.nodes import SHOUT

from app.testing import FakeChatModel, Gateway, chain, graph_problems, node, run_graph, stream_graph


async def test_shout_upper_cases_what_flows_in() -> None:
    graph = chain(node("ScriptedModel", "model", reply="hello brave world"), node("Shout"))
    assert await run_graph(graph, "hi", node_types=[SHOUT]) == ["HELLO ", "BRAVE ", "WORLD"]


async def test_exclaim() -> None:
    graph = chain(node("Shout", exclaim=True))
    assert "".join(await run_graph(graph, "calm down", node_types=[SHOUT])) == "CALM DOWN!"


def test_unknown_params_are_a_validation_problem() -> None:
    problems = graph_problems(chain(node("Shout", loud=True)), node_types=[SHOUT])
    assert len(problems) == 1 and problems[0].startswith("node 'shout': bad params for Shout")


async def test_shout_streams_each_piece_as_it_comes() -> None:
    model = FakeChatModel(["first ", "second"], hold_after=1)
    graph = chain(node("ChatModel", "model"), node("Shout"))
    pieces = stream_graph(graph, "q", node_types=[SHOUT], chat_model=model)
    async with asyncio.timeout(5):
        # The model has said only its first word and waits: Shout has passed it on already.
        assert await anext(pieces) == "FIRST "
        model.release.set()
        assert [piece async for piece in pieces] == ["SECOND"]


async def test_a_chat_turn_through_shout_streams_upper_case() -> None:
    async with Gateway(node_types=[SHOUT], feature_factories=[]) as gateway:
        client = await gateway.open("chat", graph=chain(node("Shout")))
        await client.send({"inputs": {"input": "hello there"}})
        await gateway.settle()
    streamed = [f["message"] for f in client.transport.of_type("stream")]
    assert streamed == ["HELLO THERE"]
    assert client.transport.of_type("end")[0]["status"] == "complete"
    assert gateway.chats.messages[-1].message == "HELLO THERE"
