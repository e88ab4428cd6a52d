"""Retrying a store call while its store is away: exponential backoff, bounded in time."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from app.domain.errors import StoreUnavailable

T = TypeVar("T")
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """Try at once, then after 0.1 s, 0.2 s, 0.4 s ... (at most ``max_delay`` apart) until
    ``budget`` seconds have passed since the first try; then the last error goes up."""

    budget: float
    first_delay: float = 0.1
    max_delay: float = 2.0

    async def run(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        deadline = time.monotonic() + self.budget
        delay = self.first_delay
        attempt = 1
        while True:
            try:
                return await call()
            except StoreUnavailable as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                logger.warning("%s failed (attempt %d), retrying: %s", what, attempt, exc)
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 2, self.max_delay)
                attempt += 1
