"""OpenAIChatModel against a local server speaking the OpenAI streaming format."""

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import pytest

from app.domain.errors import ModelError
from app.domain.llm import ModelMessage
from app.infra.llm import OpenAIChatModel
from tests.integration.stub_server import Handler, Reply, Request, StubServer, unused_port

API_KEY = "sk-test-0123456789"
QUESTION = [ModelMessage("system", "Be brief."), ModelMessage("user", "Hi")]


def event(content: str | None = None, **delta: str) -> str:
    if content is not None:
        delta["content"] = content
    return "data: " + json.dumps({"choices": [{"index": 0, "delta": delta}]}) + "\n\n"


async def answer_hello(request: Request, reply: Reply) -> None:
    await reply.start_stream()
    await reply.chunk(event(role="assistant"))
    await reply.chunk(": keep-alive\n\n")
    for piece in ("Hel", "lo", " there"):
        await reply.chunk(event(piece))
    await reply.chunk(event())  # the last chunk has an empty delta and a finish reason
    await reply.chunk("data: [DONE]\n\n")
    await reply.end_stream()


async def collect(stream: AsyncIterator[str]) -> list[str]:
    return [piece async for piece in stream]


Start = Callable[..., Awaitable[tuple[StubServer, OpenAIChatModel]]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """``await start(handler, model_timeout)``: a stub server and a model pointed at it."""
    async with AsyncExitStack() as stack:

        async def start_server(
            handler: Handler, model_timeout: float = 2.0
        ) -> tuple[StubServer, OpenAIChatModel]:
            server = await stack.enter_async_context(StubServer(handler))
            model = OpenAIChatModel(f"{server.url}/v1", API_KEY, "default-model", model_timeout)
            stack.push_async_callback(model.aclose)
            return server, model

        yield start_server


async def test_a_full_stream(start: Start) -> None:
    server, model = await start(answer_hello)

    assert await collect(model.stream(QUESTION)) == ["Hel", "lo", " there"]

    (request,) = server.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.json() == {
        "model": "default-model",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ],
        "stream": True,
    }


async def test_model_and_temperature_are_passed_through(start: Start) -> None:
    server, model = await start(answer_hello)
    await collect(model.stream(QUESTION, model="other-model", temperature=0.3))
    body = server.requests[0].json()
    assert (body["model"], body["temperature"]) == ("other-model", 0.3)


async def test_the_api_key_is_sent_as_a_bearer_token(start: Start) -> None:
    server, model = await start(answer_hello)
    await collect(model.stream(QUESTION))
    assert server.requests[0].headers["authorization"] == f"Bearer {API_KEY}"


async def test_without_an_api_key_no_authorization_is_sent(start: Start) -> None:
    server, _ = await start(answer_hello)
    model = OpenAIChatModel(server.url, None, "m", 2.0)
    await collect(model.stream(QUESTION))
    await model.aclose()
    assert "authorization" not in server.requests[0].headers


@pytest.mark.parametrize("status", [401, 500])
async def test_an_http_error_gives_its_status_and_message_without_the_key(
    start: Start, status: int
) -> None:
    async def refuse(request: Request, reply: Reply) -> None:
        message = f"Incorrect API key provided: {API_KEY}"
        await reply.json(status, {"error": {"message": message, "type": "invalid_request"}})

    _, model = await start(refuse)
    with pytest.raises(ModelError) as raised:
        await collect(model.stream(QUESTION))
    text = str(raised.value)
    assert f"HTTP {status}" in text
    assert "Incorrect API key provided" in text
    assert API_KEY not in text


async def test_an_http_error_without_json_gives_its_status(start: Start) -> None:
    async def gateway_error(request: Request, reply: Reply) -> None:
        await reply.start_stream(502)
        await reply.chunk("<html>Bad gateway</html>")
        await reply.end_stream()

    _, model = await start(gateway_error)
    with pytest.raises(ModelError, match=r"answered HTTP 502$"):
        await collect(model.stream(QUESTION))


async def test_a_server_that_never_answers_times_out(start: Start) -> None:
    async def hang(request: Request, reply: Reply) -> None:
        await asyncio.sleep(10)

    _, model = await start(hang, model_timeout=0.3)
    began = time.monotonic()
    with pytest.raises(ModelError, match=r"did not answer within 0\.3 s"):
        await collect(model.stream(QUESTION))
    assert time.monotonic() - began < 2


async def test_a_stream_that_stalls_times_out(start: Start) -> None:
    async def stall(request: Request, reply: Reply) -> None:
        await reply.start_stream()
        await reply.chunk(event("Hel"))
        await asyncio.sleep(10)

    _, model = await start(stall, model_timeout=0.3)
    received: list[str] = []
    began = time.monotonic()
    with pytest.raises(ModelError, match=r"sent nothing for 0\.3 s"):
        async for piece in model.stream(QUESTION):
            received.append(piece)
    assert received == ["Hel"]
    assert time.monotonic() - began < 2


async def test_a_stream_broken_off_midway_fails(start: Start) -> None:
    async def break_off(request: Request, reply: Reply) -> None:
        await reply.start_stream()
        await reply.chunk(event("Hel"))
        # The handler returns: the connection closes without the last chunk or [DONE].

    _, model = await start(break_off)
    with pytest.raises(ModelError, match="broke off"):
        await collect(model.stream(QUESTION))


async def test_a_stream_that_ends_without_done_fails(start: Start) -> None:
    async def no_done(request: Request, reply: Reply) -> None:
        await reply.start_stream()
        await reply.chunk(event("Hel"))
        await reply.end_stream()

    _, model = await start(no_done)
    with pytest.raises(ModelError, match="ended before it was complete"):
        await collect(model.stream(QUESTION))


@pytest.mark.parametrize("data", ["not json", '{"choices": "many"}'])
async def test_malformed_data_fails(start: Start, data: str) -> None:
    async def malformed(request: Request, reply: Reply) -> None:
        await reply.start_stream()
        await reply.chunk(f"data: {data}\n\n")
        await reply.chunk("data: [DONE]\n\n")
        await reply.end_stream()

    _, model = await start(malformed)
    with pytest.raises(ModelError, match="not a chat chunk"):
        await collect(model.stream(QUESTION))


async def test_an_error_inside_the_stream_fails(start: Start) -> None:
    async def fail_midway(request: Request, reply: Reply) -> None:
        await reply.start_stream()
        await reply.chunk(event("Hel"))
        await reply.chunk('data: {"error": {"message": "overloaded"}}\n\n')
        await reply.end_stream()

    _, model = await start(fail_midway)
    with pytest.raises(ModelError, match="failed: overloaded"):
        await collect(model.stream(QUESTION))


async def test_closing_the_stream_early_hangs_up(start: Start) -> None:
    hung_up = asyncio.Event()

    async def long_answer(request: Request, reply: Reply) -> None:
        await reply.start_stream()
        await reply.chunk(event("Hel"))
        if await reply.hung_up_within(seconds=2):
            hung_up.set()

    _, model = await start(long_answer)
    stream = model.stream(QUESTION)
    assert await anext(stream) == "Hel"
    await stream.aclose()  # type: ignore[attr-defined]
    await asyncio.wait_for(hung_up.wait(), timeout=2)


async def test_an_unreachable_provider_fails() -> None:
    model = OpenAIChatModel(f"http://127.0.0.1:{unused_port()}/v1", API_KEY, "m", 2.0)
    with pytest.raises(ModelError, match="cannot reach the model provider") as raised:
        await collect(model.stream(QUESTION))
    assert API_KEY not in str(raised.value)
    await model.aclose()
