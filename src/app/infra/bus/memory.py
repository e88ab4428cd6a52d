"""The chat bus of a single process: there is nobody else to tell, only turns to count."""

from __future__ import annotations

import time

from app.domain.ports import ChatBusListener


class InProcessChatBus:
    def __init__(self) -> None:
        self._turns: dict[str, tuple[str, float]] = {}

    def attach(self, listener: ChatBusListener) -> None:
        """Nothing arrives from elsewhere, so the listener is never called."""

    async def join(self, chat_id: str) -> None:
        pass

    async def leave(self, chat_id: str) -> None:
        pass

    async def publish(self, chat_id: str, frame: bytes) -> bool:
        return False

    async def request_stop(self, chat_id: str) -> None:
        pass

    async def claim_turn(self, chat_id: str, turn_id: str, ttl_seconds: float) -> bool:
        if await self.turn_running(chat_id):
            return False
        self._turns[chat_id] = (turn_id, time.monotonic() + ttl_seconds)
        return True

    async def release_turn(self, chat_id: str, turn_id: str) -> None:
        held = self._turns.get(chat_id)
        if held is not None and held[0] == turn_id:
            del self._turns[chat_id]

    async def turn_running(self, chat_id: str) -> bool:
        held = self._turns.get(chat_id)
        if held is None:
            return False
        if held[1] < time.monotonic():
            del self._turns[chat_id]
            return False
        return True
