"""The seed's compute and translate examples, answered over a real socket."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.conftest import Server
from tests.e2e.wsclient import ask, close_of, opened, recv, send

pytestmark = pytest.mark.e2e


async def test_compute_and_translate(server: Server) -> None:
    flow = server.create_flow("owner")
    token = server.token("owner")
    base = f"{server.ws}/api/v1/chat/{flow}"
    async with opened(f"{base}/compute?t={token}&chat_id=calc") as ws:
        assert await ask(ws, {"action": "compute", "data": 3}) == {"result": 9.0}
        assert await ask(ws, {"action": "compute", "data": "x"}) == {
            "error": "Invalid input for computation"
        }
        assert (await ask(ws, {"action": "divide"}))["code"] == "unknown_action"
        assert (await ask(ws, "{oops"))["code"] == "invalid_json"
        assert await ask(ws, {"action": "compute", "data": 1.5}) == {"result": 2.25}
    async with opened(f"{base}/translate?t={token}&chat_id=words") as ws:
        assert await ask(ws, {"text": "Hello, how are you?", "target_language": "zh"}) == {
            "translated_text": "翻译为中文: Hello, how are you?"
        }
        assert await ask(ws, {"text": "你好", "target_language": "en"}) == {
            "translated_text": "Translated to English: 你好"
        }
        assert await ask(ws, {"target_language": "zh"}) == {
            "error": "No text provided for translation"
        }


async def test_oversized_frame_closes_with_1009(server: Server) -> None:
    flow = server.create_flow("owner")
    token = server.token("owner")
    async with opened(f"{server.ws}/api/v1/chat/{flow}/compute?t={token}&chat_id=big") as ws:
        await send(ws, {"action": "compute", "data": "1" * 70_000})
        from websockets.exceptions import ConnectionClosed

        with pytest.raises(ConnectionClosed) as closed:
            await recv(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def test_health_and_ready(server: Server) -> None:
    import httpx

    assert httpx.get(f"{server.http}/health", timeout=5).json() == {"status": "ok"}
    ready = httpx.get(f"{server.http}/ready", timeout=5)
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": True}


async def test_unknown_path_is_refused(server: Server) -> None:
    token = server.token("owner")
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus) as refused:
        await close_of(f"{server.ws}/api/v1/nowhere?t={token}")
    assert refused.value.response.status_code in (403, 404)


def test_the_http_routes_and_the_chat_protocol_are_described(server: Server) -> None:
    openapi = httpx.get(f"{server.http}/schema/openapi.json", timeout=10)
    assert openapi.status_code == 200
    assert {"/health", "/ready", "/asyncapi.json"} <= set(openapi.json()["paths"])
    asyncapi = httpx.get(f"{server.http}/asyncapi.json", timeout=10)
    assert asyncapi.status_code == 200 and asyncapi.json()["asyncapi"] == "3.0.0"
    printed = server.cli("schema", "openapi", "--output", str(server.workdir / "openapi.json"))
    assert printed.returncode == 0
    assert (server.workdir / "openapi.json").read_text().startswith("{")
