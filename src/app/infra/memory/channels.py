"""The in-process :class:`~app.domain.ports.ChatFanOut` and :class:`~app.domain.ports.TurnControl`.

Alone in its store (the embedded default) it has nobody to hear from. Sharing a store with
others (unit tests), it hears their frames and stops on the next turn of the event loop, as it
would hear them from Redis; ``drop_next`` loses frames on the way, to test gap filling.
"""

from __future__ import annotations

import asyncio

from app.domain.ports import ControlListener, FanOutListener
from app.infra.memory.store import MemoryStore


class InProcessChannels:
    """The chat fan-out and stop control of one "process", over a :class:`MemoryStore`."""

    def __init__(self, store: MemoryStore | None = None) -> None:
        self._store = store or MemoryStore()
        self._listener: FanOutListener | None = None
        self._control: ControlListener | None = None
        #: Tests: the next this many deliveries to this process are lost.
        self.drop_next = 0

    def attach(self, listener: FanOutListener | ControlListener) -> None:
        # One object usually listens for both (the rooms); either role is taken if offered.
        if hasattr(listener, "on_frames"):
            self._listener = listener  # type: ignore[assignment]
        if hasattr(listener, "on_stop"):
            self._control = listener  # type: ignore[assignment]

    async def join(self, chat_id: str) -> None:
        self._store.check()
        self._store.subscribe(chat_id, self)

    async def leave(self, chat_id: str) -> None:
        self._store.unsubscribe(chat_id, self)

    async def request_stop(self, chat_id: str) -> None:
        self._store.check()
        for channels in self._store.subscribed(chat_id):
            if channels is not self and channels._control is not None:
                asyncio.get_running_loop().call_soon(channels._control.on_stop, chat_id)

    def deliver(self, chat_id: str, turn_id: str, seq: int, frames: list[bytes]) -> None:
        """Called by another process's log when it appends to a chat this one joined."""
        if self.drop_next > 0:
            self.drop_next -= 1
            return
        if self._listener is not None:
            asyncio.get_running_loop().call_soon(
                self._listener.on_frames, chat_id, turn_id, seq, frames
            )

    def resync(self) -> None:
        """Tests: as if this process's fan-out had reconnected."""
        if self._listener is not None:
            self._listener.on_resync()
