"""The translators: the seed's marker, the chat model prompt, and LibreTranslate over HTTP."""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import pytest

from app.domain.errors import ModelError
from app.domain.llm import ModelMessage
from app.infra.translate import ChatModelTranslator, LibreTranslateTranslator, MarkerTranslator
from app.testing import FakeChatModel
from tests.integration.stub_server import Handler, Reply, Request, StubServer, unused_port

API_KEY = "lt-key-0123456789"

Start = Callable[..., Awaitable[tuple[StubServer, LibreTranslateTranslator]]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """``await start(handler, api_key, translator_timeout)``: a stub and a translator for it."""
    async with AsyncExitStack() as stack:

        async def start_server(
            handler: Handler, api_key: str | None = API_KEY, translator_timeout: float = 2.0
        ) -> tuple[StubServer, LibreTranslateTranslator]:
            server = await stack.enter_async_context(StubServer(handler))
            translator = LibreTranslateTranslator(server.url, api_key, translator_timeout)
            stack.push_async_callback(translator.aclose)
            return server, translator

        yield start_server


async def bonjour(request: Request, reply: Reply) -> None:
    await reply.json(200, {"translatedText": "Bonjour"})


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("en", "Translated to English: Hello"),
        ("zh", "翻译为中文: Hello"),
        ("fr", "Unsupported language"),
    ],
)
async def test_marker_translator_keeps_the_seed_behaviour(target: str, expected: str) -> None:
    assert await MarkerTranslator().translate("Hello", target) == expected


async def test_chat_model_translator_asks_the_model_and_joins_its_answer() -> None:
    model = FakeChatModel(["Bon", "jour"])
    assert await ChatModelTranslator(model).translate("Hello", "fr") == "Bonjour"
    ((system, user),) = model.calls
    assert system.role == "system"
    assert "fr" in system.content
    assert user == ModelMessage("user", "Hello")


async def test_libretranslate_success(start: Start) -> None:
    server, translator = await start(bonjour)

    assert await translator.translate("Hello", "fr") == "Bonjour"

    (request,) = server.requests
    assert (request.method, request.path) == ("POST", "/translate")
    assert request.json() == {
        "q": "Hello",
        "source": "auto",
        "target": "fr",
        "format": "text",
        "api_key": API_KEY,
    }


async def test_libretranslate_without_a_key_sends_none(start: Start) -> None:
    server, translator = await start(bonjour, api_key=None)
    await translator.translate("Hello", "fr")
    assert "api_key" not in server.requests[0].json()


@pytest.mark.parametrize("status", [400, 403, 500])
async def test_libretranslate_error_status(start: Start, status: int) -> None:
    async def refuse(request: Request, reply: Reply) -> None:
        await reply.json(status, {"error": f"Invalid API key {API_KEY}"})

    _, translator = await start(refuse)
    with pytest.raises(ModelError) as raised:
        await translator.translate("Hello", "fr")
    text = str(raised.value)
    assert f"HTTP {status}" in text
    assert "Invalid API key" in text
    assert API_KEY not in text


async def test_libretranslate_answer_without_translation(start: Start) -> None:
    async def odd(request: Request, reply: Reply) -> None:
        await reply.json(200, {"text": "Bonjour"})

    _, translator = await start(odd)
    with pytest.raises(ModelError, match="without translatedText"):
        await translator.translate("Hello", "fr")


async def test_libretranslate_timeout(start: Start) -> None:
    async def hang(request: Request, reply: Reply) -> None:
        await asyncio.sleep(10)

    _, translator = await start(hang, translator_timeout=0.3)
    began = time.monotonic()
    with pytest.raises(ModelError, match=r"did not answer within 0\.3 s"):
        await translator.translate("Hello", "fr")
    assert time.monotonic() - began < 2


async def test_libretranslate_unreachable_host() -> None:
    translator = LibreTranslateTranslator(f"http://127.0.0.1:{unused_port()}", API_KEY, 2.0)
    with pytest.raises(ModelError, match="cannot reach the translation service"):
        await translator.translate("Hello", "fr")
    await translator.aclose()
