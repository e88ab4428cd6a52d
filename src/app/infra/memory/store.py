"""What the in-process twins share: the state Redis would hold."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from app.domain.chats import ChatSession, TurnRecord
from app.domain.errors import StoreUnavailable


class MemoryStore:
    """The state Redis would hold, shared by the in-process twins of several "processes";
    ``down = True`` makes every twin over it raise ``StoreUnavailable``."""

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
        #: chat_id -> its owner, as the chat repository claimed it (the shared owner cache).
        self.owners: dict[str, ChatSession] = {}
        #: chat_id -> the channels subscribed to it (one per simulated process): the one held
        #: as is (the embedded default has only its own), a set only while there are more.
        self.subscribers: dict[str, Any] = {}
        #: Set by tests: every call fails as if the store could not be reached.
        self.down = False

    def subscribe(self, chat_id: str, channels: Any) -> None:
        held = self.subscribers.get(chat_id)
        if held is None or held is channels:
            self.subscribers[chat_id] = channels
        elif isinstance(held, set):
            held.add(channels)
        else:
            self.subscribers[chat_id] = {held, channels}

    def unsubscribe(self, chat_id: str, channels: Any) -> None:
        held = self.subscribers.get(chat_id)
        if held is channels:
            del self.subscribers[chat_id]
        elif isinstance(held, set):
            held.discard(channels)
            if len(held) == 1:
                self.subscribers[chat_id] = next(iter(held))

    def subscribed(self, chat_id: str) -> tuple[Any, ...]:
        held = self.subscribers.get(chat_id)
        if held is None:
            return ()
        return tuple(held) if isinstance(held, set) else (held,)

    def check(self) -> None:
        if self.down:
            raise StoreUnavailable("in-memory store is down")
