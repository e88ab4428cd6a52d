"""What the Redis turn log and channels report (:class:`app.infra.metrics.PrometheusMetrics`
implements it); prometheus-client itself is imported only where the metrics are made."""

from __future__ import annotations

from typing import Protocol


class BusMetrics(Protocol):
    def publish_failed(self) -> None:
        """A write of the turn log (its frames' XADD and PUBLISH) failed; it is retried."""
        ...

    def delivered(self, lag: float) -> None:
        """Frames published by another process arrived ``lag`` seconds after they were sent."""
        ...


class NoBusMetrics:
    __slots__ = ()

    def publish_failed(self) -> None:
        pass

    def delivered(self, lag: float) -> None:
        pass


NO_BUS_METRICS: BusMetrics = NoBusMetrics()
