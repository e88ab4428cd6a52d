"""A node type from an extension, in a chat turn: its failures end the turn, never hang it."""

from __future__ import annotations

from collections.abc import AsyncIterator

from app.extend import Incoming, ModelError, NodeContext, NodeType, NoParams
from app.testing import Gateway, chain, node


async def _buggy(params: NoParams, incoming: Incoming, context: NodeContext) -> AsyncIterator[str]:
    yield "a "
    raise KeyError("a bug in an extension")


async def _failing(
    params: NoParams, incoming: Incoming, context: NodeContext
) -> AsyncIterator[str]:
    yield "a "
    raise ModelError("the summariser's provider answered 503")


BUGGY = NodeType("Buggy", NoParams, _buggy)
FAILING = NodeType("Failing", NoParams, _failing)


async def _turn(node_type: NodeType[NoParams]) -> tuple[list[dict[str, object]], Gateway]:
    async with Gateway(node_types=[node_type], feature_factories=[]) as gateway:
        client = await gateway.open("chat", graph=chain(node(node_type.name)))
        await client.send({"inputs": {"input": "q"}})
        await gateway.settle()
    return client.sent, gateway


async def test_a_node_that_raises_a_bug_ends_the_turn_failed() -> None:
    sent, gateway = await _turn(BUGGY)
    assert [f["type"] for f in sent] == ["begin", "start", "stream", "error", "end", "close"]
    assert sent[3]["code"] == "turn_failed" and sent[3]["message"] == "the turn failed"
    assert "a bug" not in str(sent)  # the exception's text is for the log, not the client
    answer = gateway.chats.messages[-1]
    assert (answer.message, answer.status) == ("a ", "failed")


async def test_a_model_error_from_a_node_is_shown_to_the_user() -> None:
    sent, _ = await _turn(FAILING)
    assert sent[3]["message"] == "the summariser's provider answered 503"
    assert sent[4]["status"] == "failed"
