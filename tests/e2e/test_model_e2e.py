"""A flow with a ``ChatModel`` node against an OpenAI-compatible server that misbehaves.

The stub model server runs on its own event loop in a thread of the test process; flowgate
reaches it over loopback, as it would a real provider.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Server, make_server
from tests.e2e.wsclient import ask, opened, send, until
from tests.integration.stub_server import Reply, Request, StubServer

pytestmark = pytest.mark.e2e

MODEL_GRAPH = {
    "nodes": [
        {"id": "in", "type": "ChatInput", "params": {}},
        {"id": "llm", "type": "ChatModel", "params": {"temperature": 0.2}},
        {"id": "out", "type": "ChatOutput", "params": {}},
    ],
    "edges": [{"source": "in", "target": "llm"}, {"source": "llm", "target": "out"}],
}
API_KEY = "sk-e2e-secret-key"


def sse(content: str) -> str:
    return (
        "data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": content}}]}) + "\n\n"
    )


class ModelStub:
    """Answers by the last user message: ``ok``, ``fail``, ``hang``, ``break`` or ``slow``."""

    def __init__(self) -> None:
        self.hung_up: list[bool] = []
        self.prompts: list[list[dict[str, str]]] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.url = ""
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ModelStub:
        self._thread.start()
        assert self._ready.wait(10), "model stub did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with StubServer(self._answer) as server:
            self.url = f"{server.url}/v1"
            self._ready.set()
            await self._stop.wait()

    async def _answer(self, request: Request, reply: Reply) -> None:
        messages = request.json()["messages"]
        self.prompts.append(messages)
        what = messages[-1]["content"]
        if what == "fail":
            await reply.json(500, {"error": {"message": "model overloaded"}})
            return
        if what == "hang":
            await reply.hung_up_within(5)  # says nothing until flowgate gives up
            return
        await reply.start_stream()
        if what == "break":
            await reply.chunk(sse("half an "))
            return  # the connection closes without [DONE]
        if what == "slow":
            for i in range(50):
                await reply.chunk(sse(f"p{i} "))
                if await reply.hung_up_within(0.05):
                    self.hung_up.append(True)
                    return
            self.hung_up.append(False)
        else:
            for piece in ("Hello", " from", " the model"):
                await reply.chunk(sse(piece))
        await reply.chunk("data: [DONE]\n\n")
        await reply.end_stream()


@pytest.fixture(scope="module")
def stub() -> Iterator[ModelStub]:
    with ModelStub() as running:
        yield running


@pytest.fixture(scope="module")
def llm_server(stub: ModelStub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = make_server(
        tmp_path_factory.mktemp("llm"),
        llm_base_url=stub.url,
        llm_api_key=API_KEY,
        llm_timeout="1",
    )
    running.start()
    yield running
    running.stop()


async def turn(server: Server, flow: str, token: str, chat: str, text: str) -> list[dict]:  # type: ignore[type-arg]
    async with opened(f"{server.ws}/api/v1/chat/{flow}?t={token}&chat_id={chat}") as ws:
        await send(ws, {"inputs": {"input": text}})
        return await until(ws, "close")


async def test_model_streams_through_and_gets_memory(llm_server: Server, stub: ModelStub) -> None:
    flow = llm_server.create_flow("m1", MODEL_GRAPH)
    token, chat = llm_server.token("m1"), f"c-{uuid.uuid4().hex[:8]}"
    frames = await turn(llm_server, flow, token, chat, "ok")
    assert [f["message"] for f in frames if f["type"] == "stream"] == [
        "Hello",
        " from",
        " the model",
    ]
    assert frames[-2]["status"] == "complete"
    await turn(llm_server, flow, token, chat, "ok")
    # The second call carried the first turn as memory.
    assert [m["content"] for m in stub.prompts[-1]] == ["ok", "Hello from the model", "ok"]


@pytest.mark.parametrize(
    ("what", "expected"),
    [("fail", "500"), ("hang", "did not answer within 1 s"), ("break", "stream")],
)
async def test_model_failures_end_the_turn_failed(
    llm_server: Server, what: str, expected: str
) -> None:
    flow = llm_server.create_flow("m2", MODEL_GRAPH)
    token, chat = llm_server.token("m2"), f"c-{uuid.uuid4().hex[:8]}"
    frames = await turn(llm_server, flow, token, chat, what)
    errors = [f for f in frames if f["type"] == "error"]
    assert [e["code"] for e in errors] == ["turn_failed"]
    assert expected.lower() in errors[0]["message"].lower()
    assert API_KEY not in json.dumps(frames)
    assert frames[-2]["type"] == "end" and frames[-2]["status"] == "failed"
    assert frames[-1]["type"] == "close"
    async with opened(f"{llm_server.ws}/api/v1/chat/{flow}?t={token}&chat_id={chat}") as ws:
        stored = (await ask(ws, {"action": "history"}))["messages"][0]
    assert stored["status"] == "failed"
    assert API_KEY not in llm_server.log()


async def test_stop_closes_the_model_stream(llm_server: Server, stub: ModelStub) -> None:
    flow = llm_server.create_flow("m3", MODEL_GRAPH)
    token, chat = llm_server.token("m3"), f"c-{uuid.uuid4().hex[:8]}"
    async with opened(f"{llm_server.ws}/api/v1/chat/{flow}?t={token}&chat_id={chat}") as ws:
        await send(ws, {"inputs": {"input": "slow"}})
        frames = await until(ws, "stream")
        await send(ws, {"action": "stop"})
        frames += await until(ws, "close")
    assert frames[-2]["status"] == "stopped"
    for _ in range(40):
        if stub.hung_up:
            break
        await asyncio.sleep(0.05)
    assert stub.hung_up[-1] is True
