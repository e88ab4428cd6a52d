"""``WS /api/v1/chat/{flow_id}`` and ``WS /api/v1/chat/{flow_id}/{feature}``.

Accept first (so that a browser can read the close code and reason), admit, then pump each
received frame into the domain's session (:mod:`app.domain.session`). No polling: the loop
waits on ``receive()`` only.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from litestar import WebSocket, websocket
from litestar.types import Receive, Send

from app.bootstrap import Container
from app.domain import log_context
from app.domain.admission import Admission, AdmissionRequest, TokenSource
from app.domain.metrics import Limit
from app.domain.rejections import Rejected, Rejection

logger = logging.getLogger(__name__)

TOKEN_COOKIE = "access_token_cookie"
_QUERY_KEYS = frozenset(("t", "chat_id", "version_id"))


#: Litestar's wrappers around the server's ``send`` and ``receive`` on a WebSocket route, by
#: qualified name. For a ``websocket.send`` or ``websocket.receive`` event they add nothing
#: flowgate needs: ``wrapped_send``/``wrapped_receive`` track the socket's state to raise
#: ``WebSocketDisconnect`` on a send after a disconnect (the server raises on such a send
#: anyway, and the connection takes any error of a send for a peer gone), and
#: ``capture_response_started`` watches for ``http.response.start``, which a socket never
#: sends. Yet each is a coroutine call per frame (in the benchmark, most of Litestar's share of
#: a frame), and the first two are closures that hold the socket (:func:`unwrap`), so a chat
#: socket is given the server's own callables before its handshake. Any other wrapper (a
#: middleware someone adds) is kept.
_LITESTAR_WRAPPERS = frozenset(
    {
        "WebSocket.send_wrapper.<locals>.wrapped_send",
        "WebSocket.receive_wrapper.<locals>.wrapped_receive",
        "ExceptionHandlerMiddleware.__call__.<locals>.capture_response_started",
    }
)


def server_callable(wrapped: Callable[..., Any], name: str) -> Callable[..., Any]:
    """The callable under Litestar's known wrappers of ``send``/``receive`` (``name``: the
    wrapped callable's name in the wrapper's closure); ``wrapped`` itself if it is none."""
    function = wrapped
    while isinstance(function, types.FunctionType):
        cell = _cell_index(function.__code__, name)
        if cell is None or function.__closure__ is None:
            break
        function = function.__closure__[cell].cell_contents
    return function


#: (code of a wrapper, name) -> where that name's cell is in the wrapper's closure, or None if
#: the code is no known wrapper or has no such cell. Litestar's wrappers are a handful of code
#: objects shared by every socket: each connect looked the cell up by building a dict of the
#: closure, 1-4 % of a connect's CPU in the benchmark.
_CELLS: dict[tuple[types.CodeType, str], int | None] = {}


def _cell_index(code: types.CodeType, name: str) -> int | None:
    key = (code, name)
    if key not in _CELLS:
        known = code.co_qualname in _LITESTAR_WRAPPERS and name in code.co_freevars
        if len(_CELLS) >= 64:  # only a middleware that made code objects per call gets here
            _CELLS.clear()
        _CELLS[key] = code.co_freevars.index(name) if known else None
    return _CELLS[key]


class SocketTransport:
    """Frames out of a socket that :func:`unwrap` has given the server's own callables."""

    __slots__ = ("_send", "_socket")

    def __init__(self, socket: WebSocket) -> None:  # type: ignore[type-arg]
        self._socket = socket
        self._send: Send = socket.send

    def send(self, data: bytes) -> Awaitable[None]:
        # The server's own send, for the connection to await (no coroutine of this method's
        # own in between: every frame sent passes here). A raw ASGI event: the server needs
        # ``str`` for a text frame, nothing else to wrap.
        return self._send({"type": "websocket.send", "text": data.decode(), "bytes": None})

    async def close(self, code: int, reason: str) -> None:
        await self._socket.close(code=code, reason=reason)


def _admission_request(socket: WebSocket, flow_id: str, feature: str) -> AdmissionRequest:  # type: ignore[type-arg]
    # Straight from the ASGI scope, parsed for this call only: Litestar's ``query_params`` and
    # ``headers`` would cache the parsed query (the token included) and a header multidict in
    # the connection's scope for as long as the socket lives.
    query = _query(socket.scope.get("query_string", b""))
    token: str | None = query.get("t") or None
    source: TokenSource | None = TokenSource.QUERY if token else None
    if token is None:
        authorization = _header(socket, b"authorization") or ""
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            token, source = credentials.strip(), TokenSource.HEADER
    if token is None and (cookie := _cookie(_header(socket, b"cookie"), TOKEN_COOKIE)):
        token, source = cookie, TokenSource.COOKIE
    return AdmissionRequest(
        flow_id=flow_id,
        feature=feature,
        token=token,
        token_source=source,
        origin=_header(socket, b"origin"),
        chat_id=query.get("chat_id"),
        version_id=query.get("version_id"),
    )


def _query(query_string: bytes) -> dict[str, str]:
    """The first value of each query parameter that admission reads (as Litestar parses it:
    ``parse_qsl`` with blank values kept, ``&`` between pairs).

    A pair with no ``%`` or ``+`` is taken as it is; only the others go through
    ``parse_qsl``, which decodes them exactly as it would have in the whole string. A
    connect's query is three plain pairs, and ``parse_qsl`` over all of it was ~3 % of a
    connect's CPU in the benchmark (a regex and two ``unquote`` calls per pair).
    """
    found: dict[str, str] = {}
    for pair in query_string.decode("latin-1").split("&"):
        if "%" in pair or "+" in pair:
            parsed = parse_qsl(pair, keep_blank_values=True, separator="&")
            if not parsed:
                continue
            key, value = parsed[0]
        else:
            if not pair:
                continue
            key, _, value = pair.partition("=")
        if key in _QUERY_KEYS and key not in found:
            found[key] = value
    return found


def _cookie(header: str | None, name: str) -> str | None:
    """The first cookie called ``name`` in a ``Cookie`` header (browsers send the most specific
    first). Not ``socket.cookies``: that would keep every cookie in the scope for the socket's
    life, the token among them."""
    for pair in (header or "").split(";"):
        key, sep, value = pair.partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value
    return None


def _header(socket: WebSocket, name: bytes) -> str | None:  # type: ignore[type-arg]
    """The first value of a request header (names compared case-insensitively)."""
    for key, value in socket.scope["headers"]:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def _admit(
    socket: WebSocket,  # type: ignore[type-arg]
    flow_id: str,
    feature_name: str,
    container: Container,
) -> Admission | None:
    """The admission, or None once the socket is closed with the reason.

    A coroutine of its own, so that the request (and its raw token) is gone with its frame
    once admitted, instead of living in :func:`chat_endpoint`'s frame as long as the socket.
    """
    locale, metrics = container.settings.locale, container.metrics
    try:
        admission = await container.admission.admit(
            _admission_request(socket, flow_id, feature_name)
        )
    except Rejected as rejected:
        metrics.admission(rejected.rejection)
        if rejected.rejection is Rejection.TOO_MANY_CONNECTIONS:
            metrics.limit_reached(Limit.CONNECTIONS_PER_USER)
        logger.info(
            "refused %s for flow %s: %s (%s)",
            _loggable(feature_name),
            _loggable(flow_id),
            rejected.rejection.name,
            rejected,
        )
        await _close(socket, rejected.rejection, locale)
    except Exception:
        metrics.admission(Rejection.INTERNAL)
        logger.exception("admission failed unexpectedly for flow %s", _loggable(flow_id))
        await _close(socket, Rejection.INTERNAL, locale)
    else:
        metrics.admission(None)
        return admission
    return None


# The container comes from the app, not from an injected ``state: State`` parameter, for which
# Litestar would build a State (and its RLock) per connection, kept as long as the socket.


@websocket(["/api/v1/chat/{flow_id:str}", "/api/v1/chat/{flow_id:str}/{feature:str}"])
async def chat_endpoint(socket: WebSocket) -> None:  # type: ignore[type-arg]
    """Both chat routes (the feature is the path's second segment, else ``chat``): accept,
    admit, then pump frames into the session until the socket closes.

    One handler for both paths, with the receive loop inline, not a coroutine of its own that
    each route's handler would await: an idle socket keeps every coroutine of its await chain
    alive, so each one fewer is memory saved per connection. The path's segments are read from
    the scope, where Litestar's router put them, rather than declared as parameters: each one
    declared is extracted and validated again per connect (~2 % of a connect's CPU).
    """
    path_params = socket.scope["path_params"]
    flow_id: str = path_params["flow_id"]
    feature_name: str = path_params.get("feature", "chat")
    container: Container = socket.app.state.container
    receive = unwrap(socket)
    await socket.accept()
    if container.draining:  # SIGTERM: this process is going; the client retries elsewhere
        container.metrics.admission(Rejection.SERVICE_RESTART)
        await _close(socket, Rejection.SERVICE_RESTART, container.settings.locale)
        return
    admission = await _admit(socket, flow_id, feature_name, container)
    if admission is None:
        return
    # Every line of this connection (its own ASGI task) carries who and what it is.
    log_context.bind(
        chat_id=admission.chat_id, flow_id=admission.flow.id, user_id=admission.user.id
    )
    logger.info("admitted to feature %s", feature_name)
    try:
        session = await container.sessions.open(admission, SocketTransport(socket))
    except Exception:
        logger.exception("opening the session failed for flow %s", _loggable(flow_id))
        await _close(socket, Rejection.INTERNAL, container.settings.locale)
        await container.admission.release(admission)
        return
    try:
        while session.open:
            event = await receive()
            if event["type"] != "websocket.receive":
                break
            await session.receive(event.get("text") or event.get("bytes") or b"")
    except Exception:
        logger.exception("connection %s failed", session.connection.id)
        await session.fail()
    finally:
        await session.close()


def _loggable(path_segment: str) -> str:
    """A client's path segment for a log line: bounded, and no line breaks of its own making."""
    if len(path_segment) <= 64 and path_segment.isprintable():
        return path_segment
    return repr(path_segment[:64]) + ("..." if len(path_segment) > 64 else "")


async def _close(socket: WebSocket, rejection: Rejection, locale: str) -> None:  # type: ignore[type-arg]
    await socket.close(code=rejection.code, reason=rejection.reason(locale))


def unwrap(socket: WebSocket) -> Receive:  # type: ignore[type-arg]
    """Give the socket the server's own ``send`` and ``receive`` (see ``_LITESTAR_WRAPPERS``),
    and return that ``receive``.

    Litestar's wrappers are closures that hold the socket: a reference cycle, which holds the
    server's callables and through them the whole connection (uvicorn's protocol, its parser,
    buffers, headers, the transport: about 60 objects) until the cyclic collector runs, which
    in the benchmark cost ~8 % of the server's CPU on connects. Without them the socket is
    freed as its handler returns, and an idle socket does not keep the two closures. Litestar
    does not use them after the handler: an error that leaves the handler is answered by its
    exception middleware through that middleware's own ``send``.
    """
    receive: Receive = server_callable(socket.receive, "receive")
    socket.receive = receive
    socket.send = server_callable(socket.send, "send")
    return receive
