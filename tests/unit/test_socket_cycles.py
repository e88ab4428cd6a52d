"""A socket whose handler has returned is freed by reference counting. Litestar's WebSocket
holds itself through its ``send``/``receive`` wrappers, and with it the server's whole
connection, which only the cyclic collector could free; the chat handler gives the socket the
server's own callables instead (app.api.chat_socket.unwrap)."""

from __future__ import annotations

import gc
from types import SimpleNamespace

import pytest
from litestar import Litestar, WebSocket
from litestar.exceptions import WebSocketDisconnect
from litestar.testing import TestClient

from app.api import chat_socket
from app.domain.metrics import NO_METRICS

CONNECTS = 6


def _litestar_sockets() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, WebSocket))


def _sockets_left_after_connects() -> int:
    """Litestar WebSocket objects still in memory after CONNECTS sockets to the real chat
    endpoint (a draining process: accepted, closed 1012, returned), with the collector off."""
    app = Litestar([chat_socket.chat_endpoint])
    # Draining: the handler accepts, closes 1012 and returns; nothing else of the container is used.
    app.state.container = SimpleNamespace(
        draining=True, metrics=NO_METRICS, settings=SimpleNamespace(locale="en")
    )
    gc.collect()
    gc.disable()
    try:
        with TestClient(app) as client:
            before = _litestar_sockets()
            for n in range(CONNECTS):
                path = "/api/v1/chat/f1" if n % 2 else "/api/v1/chat/f1/compute"
                with (
                    client.websocket_connect(f"{path}?t=x") as ws,
                    pytest.raises(WebSocketDisconnect) as closed,
                ):
                    ws.receive_text()
                assert closed.value.code == 1012
        return _litestar_sockets() - before
    finally:
        gc.enable()


def test_a_closed_socket_is_freed_without_the_cyclic_collector() -> None:
    assert _sockets_left_after_connects() == 0


def test_with_litestars_wrappers_kept_each_socket_waits_for_the_collector(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What the test above rules out really happens without the fix (else it checks nothing).
    monkeypatch.setattr(chat_socket, "unwrap", lambda socket: socket.receive)
    assert _sockets_left_after_connects() == CONNECTS
