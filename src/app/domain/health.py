"""Whether the backing stores answer, known at every moment (PROTOCOL.md §3: while a store is
away, new sockets are told ``1013 service unavailable`` rather than admitted to fail later).

One loop pings every store each second (each ping bounded); admission reads the result. A
store is taken for down after :data:`FAILURES_TO_DOWN` failed pings in a row, so that a busy
store (a ping queued behind a burst of writes on SQLite) is not mistaken for a lost one, which
would refuse every new socket; one that answers again is known to be back within a second.
A refused connection fails at once, so a store that went away is known within about 2 s.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

from app.domain.metrics import NO_METRICS, Metrics

logger = logging.getLogger(__name__)

INTERVAL = 1.0
TIMEOUT = 5.0
FAILURES_TO_DOWN = 2

Check = Callable[[], Awaitable[object]]


class StoreHealth:
    def __init__(
        self,
        checks: Mapping[str, Check],
        *,
        interval: float = INTERVAL,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self._checks = dict(checks)
        self._interval = interval
        self._metrics = metrics
        self.down: set[str] = set()
        self._failures: dict[str, int] = {}

    def any_down(self) -> bool:
        return bool(self.down)

    async def check_now(self) -> dict[str, bool]:
        names = list(self._checks)
        results = await asyncio.gather(*(self._check(name) for name in names))
        answers = dict(zip(names, results, strict=True))
        for name, ok in answers.items():
            failures = self._failures[name] = 0 if ok else self._failures.get(name, 0) + 1
            if ok and name in self.down:
                logger.info("%s answers again", name)
                self.down.discard(name)
            elif failures >= FAILURES_TO_DOWN and name not in self.down:
                logger.error("%s does not answer: new sockets are refused (1013)", name)
                self.down.add(name)
        return answers

    async def run(self) -> None:
        while True:
            await self.check_now()
            await asyncio.sleep(self._interval)

    async def _check(self, name: str) -> bool:
        try:
            async with asyncio.timeout(TIMEOUT):
                await self._checks[name]()
        except Exception as exc:  # whatever the driver raises, the store does not answer
            logger.debug("%s check failed: %s", name, exc)
            self._metrics.store_failed(name)
            return False
        return True
