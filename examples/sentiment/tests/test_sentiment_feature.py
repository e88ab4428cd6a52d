"""The sentiment feature, through app.testing: its handler served as the server serves it."""

from __future__ import annotations

import asyncio

import pytest
from flowgate_sentiment.feature import make_sentiment

from app.extend import ModelError, ModelMessage
from app.testing import FakeChatModel, Gateway


async def test_scores_a_text() -> None:
    async with Gateway(feature_factories=[make_sentiment]) as gateway:
        client = await gateway.open("sentiment")
        replies = [
            await client.ask({"action": "sentiment", "text": text})
            for text in ("I love it, great work", "an awful, terrible day", "it rains", "good bad")
        ]
    assert replies == [
        [{"label": "positive", "score": 1.0}],
        [{"label": "negative", "score": -1.0}],
        [{"label": "neutral", "score": 0.0}],
        [{"label": "neutral", "score": 0.0}],
    ]


async def test_bad_requests_get_flowgates_error_frames() -> None:
    async with Gateway(feature_factories=[make_sentiment]) as gateway:
        client = await gateway.open("sentiment")
        (empty,) = await client.ask({"action": "sentiment", "text": ""})
        (unknown,) = await client.ask({"action": "shout"})
    assert empty["code"] == "invalid_message" and "$.text" in str(empty["message"])
    assert unknown["code"] == "unknown_action"


async def test_words_come_from_its_own_environment_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SENTIMENT_POSITIVE", "Splendid, fab")
    async with Gateway(feature_factories=[make_sentiment]) as gateway:
        client = await gateway.open("sentiment")
        assert await client.ask({"action": "sentiment", "text": "a splendid day"}) == [
            {"label": "positive", "score": 1.0}
        ]


async def test_explain_streams_the_models_answer_then_done() -> None:
    model = FakeChatModel(["Upbeat: ", "it says love."])
    async with Gateway(feature_factories=[make_sentiment], chat_model=model) as gateway:
        client = await gateway.open("sentiment")
        frames = await client.ask({"action": "explain", "text": "I love it"}, replies=3)
    assert frames == [
        {"type": "explanation", "text": "Upbeat: "},
        {"type": "explanation", "text": "it says love."},
        {"type": "done", "label": "positive", "score": 1.0},
    ]
    (messages,) = model.calls
    assert messages[-1] == ModelMessage("user", "I love it")


async def test_a_model_failure_is_the_seeds_error_reply() -> None:
    model = FakeChatModel(["Upbeat"], fail=ModelError("the model's provider answered 500"))
    async with Gateway(feature_factories=[make_sentiment], chat_model=model) as gateway:
        client = await gateway.open("sentiment")
        frames = await client.ask({"action": "explain", "text": "hm"}, replies=2)
    assert frames[-1] == {"error": "the model's provider answered 500"}


async def test_explain_runs_as_a_task_and_frames_are_read_meanwhile() -> None:
    model = FakeChatModel(["thinking ", "done thinking"], hold_after=1)
    async with Gateway(feature_factories=[make_sentiment], chat_model=model) as gateway:
        client = await gateway.open("sentiment")
        assert await client.ask({"action": "explain", "text": "fine"}) == [
            {"type": "explanation", "text": "thinking "}
        ]
        # The model is still thinking: the connection still answers, one explain at a time.
        (busy,) = await client.ask({"action": "explain", "text": "again"})
        assert busy["code"] == "busy"
        assert await client.ask({"action": "sentiment", "text": "good"}) == [
            {"label": "positive", "score": 1.0}
        ]
        model.release.set()
        frames = await client.transport.wait_for(5)
        assert frames[-2:] == [
            {"type": "explanation", "text": "done thinking"},
            {"type": "done", "label": "neutral", "score": 0.0},
        ]


async def test_a_socket_that_goes_cancels_its_explanation() -> None:
    model = FakeChatModel(["thinking ", "done thinking"], hold_after=1)
    async with Gateway(feature_factories=[make_sentiment], chat_model=model) as gateway:
        client = await gateway.open("sentiment")
        await client.ask({"action": "explain", "text": "fine"})
        await client.close()
        await asyncio.wait_for(model.closed.wait(), 5)
        assert len(client.sent) == 1


async def test_the_installed_entry_point_registers_the_feature() -> None:
    # Gateway() loads the installed entry points, as the server does.
    async with Gateway() as gateway:
        client = await gateway.open("sentiment")
        assert await client.ask({"action": "sentiment", "text": "nice"}) == [
            {"label": "positive", "score": 1.0}
        ]
