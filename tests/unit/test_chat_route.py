"""The chat routes (app.api.chat_socket): which paths and methods reach a chat socket, with
which flow and feature, and what every other request gets."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from litestar import Litestar
from litestar.exceptions import WebSocketDisconnect
from litestar.testing import TestClient

from app.api.chat_socket import chat_endpoint
from app.domain.metrics import NO_METRICS
from app.domain.rejections import Rejected, Rejection


class RecordingAdmission:
    """Refuses every socket (flow deleted), keeping what it was asked."""

    def __init__(self) -> None:
        self.asked: list[Any] = []

    async def admit(self, request: Any) -> Any:
        self.asked.append(request)
        raise Rejected(Rejection.FLOW_DELETED)


def _app() -> tuple[Litestar, RecordingAdmission]:
    admission = RecordingAdmission()
    app = Litestar([chat_endpoint])
    app.state.container = SimpleNamespace(
        draining=False,
        metrics=NO_METRICS,
        settings=SimpleNamespace(locale="en"),
        admission=admission,
    )
    return app, admission


def _close_of(client: TestClient[Any], path: str) -> tuple[int, str]:
    with pytest.raises(WebSocketDisconnect) as closed, client.websocket_connect(path) as ws:
        ws.receive_text()
    return closed.value.code, closed.value.detail


@pytest.mark.parametrize(
    ("path", "flow_id", "feature"),
    [
        ("/api/v1/chat/f1?t=x&chat_id=c1", "f1", "chat"),
        ("/api/v1/chat/f1/?t=x", "f1", "chat"),
        ("/api/v1/chat/f1/compute?t=x", "f1", "compute"),
        ("/api/v1/chat/f1/translate/?t=x", "f1", "translate"),
    ],
)
def test_a_socket_path_names_the_flow_and_the_feature(
    path: str, flow_id: str, feature: str
) -> None:
    app, admission = _app()
    with TestClient(app) as client:
        assert _close_of(client, path) == (1008, "flow deleted")
    [asked] = admission.asked
    assert (asked.flow_id, asked.feature, asked.token) == (flow_id, feature, "x")


@pytest.mark.parametrize(
    "path", ["/api/v1/chat", "/api/v1/chat/", "/api/v1/chat/f1/compute/more", "/api/v1/chatx/f1"]
)
def test_other_paths_are_not_found(path: str) -> None:
    app, admission = _app()
    with TestClient(app) as client:
        assert client.get(path).status_code == 404
        code, reason = _close_of(client, path)
    assert reason == "Not Found" and code != 1000
    assert admission.asked == []


@pytest.mark.parametrize("path", ["/api/v1/chat/f1", "/api/v1/chat/f1/compute"])
def test_an_http_request_to_a_socket_path_is_method_not_allowed(path: str) -> None:
    app, admission = _app()
    with TestClient(app) as client:
        for method in ("GET", "POST", "DELETE"):
            answer = client.request(method, path)
            assert answer.status_code == 405
            assert answer.json()["detail"] == "Method Not Allowed"
    assert admission.asked == []
