"""One socket's session, from admission to close: what the socket layer pumps frames into.

The API layer accepts the socket, has it admitted, then calls :attr:`SocketSession.receive`
for each frame and :meth:`SocketSession.close` once it has gone. Everything else — the
single-writer connection, rate limiting and routing, the feature's hooks, the connection
registry and the per-user count — is tied together here.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from app.domain.admission import Admission, AdmissionService
from app.domain.connection import Connection, Transport
from app.domain.dispatcher import FrameDispatcher
from app.domain.errors import StoreUnavailable
from app.domain.features.base import Feature, FeatureRegistry
from app.domain.metrics import NO_METRICS, Metrics
from app.domain.ports import TokenVerifier
from app.domain.registry import ConnectionRegistry
from app.domain.rejections import Rejection

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionLimits:
    messages_per_second: float
    max_message_size: int
    send_buffer: int
    locale: str = "en"


class SocketSession:
    __slots__ = ("_dispatcher", "_factory", "_feature", "connection", "receive")

    def __init__(
        self,
        connection: Connection,
        feature: Feature,
        dispatcher: FrameDispatcher,
        factory: Sessions,
    ) -> None:
        self.connection = connection
        self._feature = feature
        self._dispatcher = dispatcher
        self._factory = factory
        #: One frame from the client: the dispatcher's own method, not a method of the
        #: session's that awaits it (a coroutine layer less on every frame).
        self.receive = dispatcher.dispatch

    @property
    def open(self) -> bool:
        return not self.connection.closed

    async def fail(self) -> None:
        """flowgate's own fault while serving the socket: close it with 1011."""
        await self.connection.close(Rejection.INTERNAL)

    async def close(self) -> None:
        """The socket has gone, whatever the reason: undo everything :meth:`Sessions.open` did."""
        self.connection.closed = True
        self._dispatcher.stop()
        factory = self._factory
        if factory.registry.remove(self.connection):  # once, however often it is closed
            factory.metrics.socket_closed(self.connection.admission.feature)
        try:
            await self._feature.closed(self.connection)
        finally:
            try:
                await factory.admission.release(self.connection.admission)
            except StoreUnavailable as exc:  # the entry expires on its own
                logger.warning("connection count not released: %s", exc)


class Sessions:
    """Opens sessions for admitted sockets; one per process."""

    def __init__(
        self,
        *,
        features: FeatureRegistry,
        verifier: TokenVerifier,
        admission: AdmissionService,
        registry: ConnectionRegistry,
        limits: SessionLimits,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self.features = features
        self.verifier = verifier
        self.admission = admission
        self.registry = registry
        self.limits = limits
        self.metrics = metrics

    def claim_lost(self, chat_id: str) -> None:
        """The store lost the claim that this chat's connections here were admitted on (it
        restarted before the claim was durable): each is closed with 1013, to reconnect and
        claim the chat again. Nothing was stored in the chat meanwhile (the repository makes
        its calls wait for the claim)."""
        self.metrics.store_failed("database")  # it lost a write it had acknowledged
        logger.warning("chat %s: its claim was lost in a database restart", chat_id)
        for connection in self.registry:
            if connection.chat_id == chat_id and not connection.closed:
                task = asyncio.get_running_loop().create_task(
                    connection.close(Rejection.SERVICE_UNAVAILABLE)
                )
                _closing.add(task)
                task.add_done_callback(_closing.discard)

    async def open(self, admission: Admission, transport: Transport) -> SocketSession:
        feature = self.features.get(admission.feature)
        assert feature is not None  # admission checked it
        limits = self.limits
        connection = Connection(
            admission, transport, limits.locale, limits.send_buffer, self.metrics
        )
        dispatcher = FrameDispatcher(
            connection,
            feature,
            self.verifier,
            limits.messages_per_second,
            max_message_size=limits.max_message_size,
        )
        session = SocketSession(connection, feature, dispatcher, self)
        self.registry.add(connection)
        self.metrics.socket_opened(admission.feature)
        try:
            await feature.opened(connection)
        except BaseException:
            await session.close()
            raise
        return session


#: The closes :meth:`Sessions.claim_lost` started (asyncio keeps only weak references).
_closing: set[asyncio.Task[None]] = set()
