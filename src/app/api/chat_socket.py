"""``WS /api/v1/chat/{flow_id}`` and ``WS /api/v1/chat/{flow_id}/{feature}``.

Accept first (so that a browser can read the close code and reason), admit, then hand each
received frame to the domain's dispatcher. No polling: the loop waits on ``receive()`` only.
"""

from __future__ import annotations

import logging

from litestar import WebSocket, websocket
from litestar.datastructures import State

from app.bootstrap import Container
from app.domain.admission import AdmissionRequest, TokenSource
from app.domain.connection import Connection
from app.domain.dispatcher import FrameDispatcher
from app.domain.rejections import Rejected, Rejection

logger = logging.getLogger(__name__)

TOKEN_COOKIE = "access_token_cookie"


class SocketTransport:
    __slots__ = ("_socket",)

    def __init__(self, socket: WebSocket) -> None:  # type: ignore[type-arg]
        self._socket = socket

    async def send(self, data: bytes) -> None:
        # Raw ASGI event: the server needs ``str`` for a text frame, nothing else to wrap.
        await self._socket.send({"type": "websocket.send", "text": data.decode(), "bytes": None})

    async def close(self, code: int, reason: str) -> None:
        await self._socket.close(code=code, reason=reason)


def _admission_request(socket: WebSocket, flow_id: str, feature: str) -> AdmissionRequest:  # type: ignore[type-arg]
    query = socket.query_params
    token: str | None = query.get("t") or None
    source: TokenSource | None = TokenSource.QUERY if token else None
    if token is None:
        authorization = socket.headers.get("authorization", "")
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            token, source = credentials.strip(), TokenSource.HEADER
    if token is None and (cookie := socket.cookies.get(TOKEN_COOKIE)):
        token, source = cookie, TokenSource.COOKIE
    return AdmissionRequest(
        flow_id=flow_id,
        feature=feature,
        token=token,
        token_source=source,
        origin=socket.headers.get("origin"),
        chat_id=query.get("chat_id"),
        version_id=query.get("version_id"),
    )


async def serve(socket: WebSocket, flow_id: str, feature_name: str, container: Container) -> None:  # type: ignore[type-arg]
    settings = container.settings
    await socket.accept()
    request = _admission_request(socket, flow_id, feature_name)
    try:
        admission = await container.admission.admit(request)
    except Rejected as rejected:
        logger.info(
            "refused %s for flow %s: %s (%s)",
            feature_name,
            flow_id,
            rejected.rejection.name,
            rejected,
        )
        await _close(socket, rejected.rejection, settings.locale)
        return
    except Exception:
        logger.exception("admission failed unexpectedly for flow %s", flow_id)
        await _close(socket, Rejection.INTERNAL, settings.locale)
        return

    feature = container.features.get(feature_name)
    assert feature is not None  # admission checked it
    connection = Connection(admission, SocketTransport(socket), settings.locale)
    dispatcher = FrameDispatcher(
        connection, feature, container.verifier, settings.messages_per_second
    )
    container.connections.add(connection)
    try:
        await feature.opened(connection)
        await _receive_loop(socket, connection, dispatcher, settings.max_message_size)
    except Exception:
        logger.exception("connection %s failed", connection.id)
        await connection.close(Rejection.INTERNAL)
    finally:
        dispatcher.stop()
        container.connections.remove(connection)
        await feature.closed(connection)


async def _receive_loop(
    socket: WebSocket,  # type: ignore[type-arg]
    connection: Connection,
    dispatcher: FrameDispatcher,
    max_message_size: int,
) -> None:
    while not connection.closed:
        event = await socket.receive()
        if event["type"] != "websocket.receive":
            connection.closed = True
            return
        data = event.get("text") or event.get("bytes") or b""
        if len(data) > max_message_size:
            await connection.close(Rejection.MESSAGE_TOO_BIG)
            return
        await dispatcher.dispatch(data)


async def _close(socket: WebSocket, rejection: Rejection, locale: str) -> None:  # type: ignore[type-arg]
    await socket.close(code=rejection.code, reason=rejection.reason(locale))


@websocket("/api/v1/chat/{flow_id:str}")
async def chat_endpoint(socket: WebSocket, flow_id: str, state: State) -> None:  # type: ignore[type-arg]
    await serve(socket, flow_id, "chat", state.container)


@websocket("/api/v1/chat/{flow_id:str}/{feature:str}")
async def feature_endpoint(socket: WebSocket, flow_id: str, feature: str, state: State) -> None:  # type: ignore[type-arg]
    await serve(socket, flow_id, feature, state.container)
