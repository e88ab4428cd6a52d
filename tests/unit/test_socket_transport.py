"""A chat socket sends and receives through the server's own ASGI callables, under Litestar's
per-frame wrappers (app.api.chat_socket._LITESTAR_WRAPPERS, taken off by ``unwrap``), and
keeps any other."""

from __future__ import annotations

from typing import Any

import pytest
from litestar import Litestar, WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect
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


def test_a_wrapper_named_like_litestars_but_of_other_code_is_kept() -> None:
    """Known wrappers are recognised by their code, not by a name any function may be given
    (``functools.wraps`` copies ``__qualname__``)."""
    import functools

    async def raw(message: Any) -> None: ...

    def litestar_like(send: Any) -> Any:
        async def wrapped_send(message: Any) -> None:
            await send(message)

        return wrapped_send

    def someones_middleware(send: Any) -> Any:
        @functools.wraps(send)
        async def passing_through(message: Any) -> None:
            await send(message)

        return passing_through

    litestars = litestar_like(raw)
    litestars.__qualname__ = "WebSocket.send_wrapper.<locals>.wrapped_send"
    disguised = someones_middleware(litestars)
    assert disguised.__qualname__ in _LITESTAR_WRAPPERS
    assert server_callable(disguised, "send") is disguised


def test_the_same_wrapper_code_is_unwrapped_for_every_socket() -> None:
    """The cell's place is remembered per code object: a second socket's wrappers (new
    closures of the same code) give that socket's own callables, not the first's."""
    seen: list[Any] = []

    @websocket("/ws")
    async def handler(socket: WebSocket) -> None:  # type: ignore[type-arg]
        receive = unwrap(socket)
        seen.append((socket.send, receive))
        await socket.accept()
        await socket.close()

    with TestClient(Litestar([handler])) as client:
        for _ in range(2):
            with client.websocket_connect("/ws") as ws, pytest.raises(WebSocketDisconnect):
                ws.receive()  # the close
    (send1, receive1), (send2, receive2) = seen
    assert send1 is not send2 and receive1 is not receive2
    assert not any(f.__qualname__ in _LITESTAR_WRAPPERS for f in (send1, send2, receive1, receive2))
