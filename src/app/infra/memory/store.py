"""What the in-process twins share: the state Redis would hold."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from app.domain.chats import TurnRecord
from app.domain.errors import StoreUnavailable


class MemoryStore:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        #: chat_id -> (holder, expires at); kept after expiry until released (``lapsed``).
        self.leases: dict[str, tuple[str, float]] = {}
        #: (chat_id, turn_id) -> (frames from position 0, expires at or None while running).
        self.logs: dict[tuple[str, str], tuple[list[bytes], float | None]] = {}
        #: chat_id -> (the latest turn's record, expires at or None while running).
        self.records: dict[str, tuple[TurnRecord, float | None]] = {}
        #: user_id -> {slot: expires at}
        self.connections: dict[str, dict[str, float]] = {}
        #: chat_id -> the channels subscribed to it (one per simulated process).
        self.subscribers: dict[str, set[Any]] = {}
        #: Set by tests: every call fails as if the store could not be reached.
        self.down = False

    def check(self) -> None:
        if self.down:
            raise StoreUnavailable("in-memory store is down")
