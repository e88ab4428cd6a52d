"""What the domain reports for the operators' metrics: one method per event, nothing else.

The port is implemented with prometheus-client in :mod:`app.infra.metrics`; :data:`NO_METRICS`
(the default of every service that reports) does nothing, so that unit tests and the CLI need
no registry. Each call is made once per event (a socket opened, a turn ended), never per piece
of an answer: a turn adds its pieces once, at its end.

Labels are bounded sets (features, statuses, rejections, limits, store names): never a user,
chat, flow or turn id.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from app.domain.chats import MessageStatus
from app.domain.rejections import Rejection


class Limit(StrEnum):
    """A limit that refused a connection or a frame."""

    CONNECTIONS_PER_USER = "connections_per_user"  # admission, 1013 ``too many connections``
    RATE = "rate"  # a frame answered ``rate_limited``
    SLOW_CONSUMER = "slow_consumer"  # a socket closed 4008
    MESSAGE_SIZE = "message_size"  # a socket closed 1009


@dataclass(frozen=True, slots=True)
class TurnReport:
    """A turn's numbers, measured once, reported at its end."""

    status: MessageStatus
    #: From the turn's start to its end (its answer stored, ``end`` sent).
    seconds: float
    #: From the turn's start to the first piece of its answer; None: no piece came.
    first_piece: float | None
    #: How long the flow's run (the model) streamed; None: it was not called.
    model_seconds: float | None
    #: Pieces of the answer streamed.
    pieces: int


class Metrics(Protocol):
    def socket_opened(self, feature: str) -> None:
        """An admitted socket's session opened."""
        ...

    def socket_closed(self, feature: str) -> None:
        """That session closed (once per :meth:`socket_opened`)."""
        ...

    def admission(self, rejection: Rejection | None) -> None:
        """A socket was admitted (None) or refused with ``rejection``."""
        ...

    def limit_reached(self, limit: Limit) -> None:
        """A connection or a frame was refused by ``limit``."""
        ...

    def turn_ended(self, turn: TurnReport) -> None:
        """A turn ended: its numbers."""
        ...

    def model_failed(self) -> None:
        """The model (its provider) failed a turn."""
        ...

    def store_failed(self, store: str) -> None:
        """A call to ``store`` (``database``, ``redis``) failed: a health check or a try."""
        ...


class NoMetrics:
    """Reports nothing."""

    __slots__ = ()

    def socket_opened(self, feature: str) -> None:
        pass

    def socket_closed(self, feature: str) -> None:
        pass

    def admission(self, rejection: Rejection | None) -> None:
        pass

    def limit_reached(self, limit: Limit) -> None:
        pass

    def turn_ended(self, turn: TurnReport) -> None:
        pass

    def model_failed(self) -> None:
        pass

    def store_failed(self, store: str) -> None:
        pass


NO_METRICS: Metrics = NoMetrics()
