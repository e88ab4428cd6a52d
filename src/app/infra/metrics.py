"""The :class:`~app.domain.metrics.Metrics` port on prometheus-client, and the Redis adapters'
own two (bus publish failures, cross-process delivery lag): ``GET /metrics`` exposes them.

Every metric lives in the registry given (one per app: tests take a fresh one each). With
``PROMETHEUS_MULTIPROC_DIR`` set (several worker processes), prometheus-client keeps each
process's values in files there and :func:`exposition` sums every process's files instead
(:class:`~prometheus_client.multiprocess.MultiProcessCollector`); the open-sockets gauge counts
live processes only (``livesum``).

Labels are bounded sets (features, statuses, close codes and rejection names, limits, store
names); no user, chat, flow or turn id is ever a label.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess

from app.domain.chats import MessageStatus
from app.domain.metrics import Limit, TurnReport
from app.domain.rejections import Rejection

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Time to first piece and model latency: an LLM's first token, from tens of ms to a minute.
FIRST_PIECE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
#: A turn, question stored to answer stored: up to the turn timeout (120 s by default) and more.
TURN_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
#: Pub/sub delivery between processes: a few ms normally (frames are batched every 2 ms).
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
ADMITTED = "admitted"


class PrometheusMetrics:
    """The domain's :class:`~app.domain.metrics.Metrics` and the Redis adapters'
    :class:`~app.infra.redis.metrics.BusMetrics`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._sockets = Gauge(
            "flowgate_open_sockets",
            "Admitted WebSockets open now, by feature.",
            ["feature"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._admissions = Counter(
            "flowgate_admissions",
            "Sockets admitted (reason admitted) or refused (the close code and rejection).",
            ["code", "reason"],
            registry=registry,
        )
        self._turns = Counter(
            "flowgate_turns", "Turns ended, by status.", ["status"], registry=registry
        )
        self._first_piece = Histogram(
            "flowgate_turn_first_piece_seconds",
            "Seconds from a turn's start to the first piece of its answer.",
            buckets=FIRST_PIECE_BUCKETS,
            registry=registry,
        )
        self._duration = Histogram(
            "flowgate_turn_duration_seconds",
            "Seconds from a turn's start to its end (its answer stored).",
            buckets=TURN_BUCKETS,
            registry=registry,
        )
        self._pieces = Counter(
            "flowgate_pieces_streamed", "Pieces of answers streamed.", registry=registry
        )
        self._model_errors = Counter(
            "flowgate_model_errors", "Turns the model's provider failed.", registry=registry
        )
        self._model_latency = Histogram(
            "flowgate_model_latency_seconds",
            "Seconds the model streamed a turn's answer (the flow run, first call to last piece).",
            buckets=TURN_BUCKETS,
            registry=registry,
        )
        self._store_errors = Counter(
            "flowgate_store_errors",
            "Failed calls to a backing store: health checks and retried tries.",
            ["store"],
            registry=registry,
        )
        self._publish_failures = Counter(
            "flowgate_bus_publish_failures",
            "Failed writes of the turn log to Redis (its frames' XADD and PUBLISH), retried.",
            registry=registry,
        )
        self._lag = Histogram(
            "flowgate_bus_delivery_lag_seconds",
            "Seconds from another process publishing a chat's frames to their arrival here.",
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self._limits = Counter(
            "flowgate_limit_refusals",
            "Connections or frames refused by a limit.",
            ["limit"],
            registry=registry,
        )
        # Every bounded label value from the start (rates over series that exist), and each
        # child resolved once: ``labels()`` takes a lock and builds a key on every call.
        self._admitted = self._admissions.labels(code="", reason=ADMITTED)
        self._refused = {
            rejection: self._admissions.labels(
                code=str(rejection.code), reason=rejection.name.lower()
            )
            for rejection in Rejection
        }
        self._by_status = {s: self._turns.labels(status=s.value) for s in MessageStatus}
        self._by_limit = {limit: self._limits.labels(limit=limit.value) for limit in Limit}
        self._by_feature: dict[str, Gauge] = {}

    # -- the domain's Metrics --------------------------------------------------------------

    def socket_opened(self, feature: str) -> None:
        self._feature(feature).inc()

    def socket_closed(self, feature: str) -> None:
        self._feature(feature).dec()

    def admission(self, rejection: Rejection | None) -> None:
        (self._admitted if rejection is None else self._refused[rejection]).inc()

    def limit_reached(self, limit: Limit) -> None:
        self._by_limit[limit].inc()

    def turn_ended(self, turn: TurnReport) -> None:
        self._by_status[turn.status].inc()
        self._duration.observe(turn.seconds)
        if turn.first_piece is not None:
            self._first_piece.observe(turn.first_piece)
        if turn.model_seconds is not None:
            self._model_latency.observe(turn.model_seconds)
        if turn.pieces:
            self._pieces.inc(turn.pieces)

    def model_failed(self) -> None:
        self._model_errors.inc()

    def store_failed(self, store: str) -> None:
        self._store_errors.labels(store=store).inc()

    # -- BusMetrics ------------------------------------------------------------------------

    def publish_failed(self) -> None:
        self._publish_failures.inc()

    def delivered(self, lag: float) -> None:
        # Hosts' clocks differ a little: a negative lag is a skew, counted as none.
        self._lag.observe(max(lag, 0.0))

    def _feature(self, feature: str) -> Gauge:
        child = self._by_feature.get(feature)
        if child is None:
            child = self._by_feature[feature] = self._sockets.labels(feature=feature)
        return child


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


async def process_exiting() -> None:
    """At the end of a worker's life (its sockets closed): in multi-process mode, its
    ``livesum`` gauge files go, so that the open sockets of a process gone count no more. (A
    worker killed outright cannot: gunicorn's ``child_exit`` hook calls
    ``mark_process_dead(worker.pid)`` for it.)"""
    if multiprocess_dir() is not None:
        prometheus_multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def exposition(metrics: object) -> tuple[bytes, str]:
    """The text exposition of ``metrics`` (a :class:`PrometheusMetrics`; anything else exposes
    nothing), or of every process's files in multi-process mode; and its content type."""
    if multiprocess_dir() is not None:
        registry = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    elif isinstance(metrics, PrometheusMetrics):
        registry = metrics.registry
    else:
        registry = CollectorRegistry()
    return generate_latest(registry), CONTENT_TYPE_LATEST
