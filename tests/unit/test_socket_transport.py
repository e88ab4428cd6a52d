"""A chat socket sends and receives through the server's own ASGI callables, under Litestar's
per-frame wrappers (app.api.chat_socket._LITESTAR_WRAPPERS, taken off by ``unwrap``), and
keeps any other."""

from __future__ import annotations

from typing import Any

from litestar import Litestar, WebSocket, websocket
from litestar.testing import TestClient

from app.api.chat_socket import _LITESTAR_WRAPPERS, SocketTransport, server_callable, unwrap


def test_frames_skip_litestars_wrappers_and_still_reach_the_client() -> None:
    seen: dict[str, Any] = {}

    @websocket("/ws")
    async def echo(socket: WebSocket) -> None:  # type: ignore[type-arg]
        seen["wrapped"] = [socket.send.__qualname__, socket.receive.__qualname__]
        receive = unwrap(socket)
        await socket.accept()
        transport = SocketTransport(socket)
        seen["unwrapped"] = [transport._send.__qualname__, receive.__qualname__]
        event = await receive()
        await transport.send(event["text"].upper().encode())
        await socket.close()

    with TestClient(Litestar([echo])) as client, client.websocket_connect("/ws") as ws:
        ws.send_text('{"a": "é"}')
        assert ws.receive_text() == '{"A": "É"}'
    # Litestar does wrap them (else this test checks nothing), and both wrappers are skipped.
    assert all(name in _LITESTAR_WRAPPERS for name in seen["wrapped"])
    assert not any(name in _LITESTAR_WRAPPERS for name in seen["unwrapped"])


def test_a_wrapper_it_does_not_know_is_kept() -> None:
    async def raw(message: Any) -> None: ...

    def someones_middleware(send: Any) -> Any:
        async def wrapped_send(message: Any) -> None:
            await send(message)

        return wrapped_send

    wrapped = someones_middleware(raw)
    assert server_callable(wrapped, "send") is wrapped
