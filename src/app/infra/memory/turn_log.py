"""The in-process :class:`~app.domain.ports.TurnLog`: frames kept in memory, delivered at once
to the other "processes" sharing the store (unit tests), expiring like the Redis log."""

from __future__ import annotations

from app.domain.chats import TurnRecord
from app.domain.turn_log import LogSlice
from app.infra.memory.store import MemoryStore


class InProcessTurnLog:
    """Turn logs and each chat's latest turn record, over a :class:`MemoryStore`."""

    def __init__(
        self, store: MemoryStore | None = None, *, ttl: float = 600.0, origin: object = None
    ) -> None:
        self._store = store or MemoryStore()
        self._ttl = ttl
        #: The channels object of this "process": its own frames are not delivered back to it.
        self.origin = origin

    def start(self, record: TurnRecord) -> None:
        self._store.records[record.chat_id] = (record, None)
        self._sweep()

    def append(self, chat_id: str, turn_id: str, seq: int, frame: bytes) -> None:
        store = self._store
        frames, _ = store.logs.setdefault((chat_id, turn_id), ([], None))
        if seq == len(frames):
            frames.append(frame)
        for channels in store.subscribed(chat_id):
            if channels is not self.origin:
                channels.deliver(chat_id, turn_id, seq, [frame])

    def end(self, record: TurnRecord) -> None:
        store = self._store
        expires = store.clock() + self._ttl
        store.records[record.chat_id] = (record, expires)
        key = (record.chat_id, record.turn_id)
        frames, _ = store.logs.get(key, ([], None))
        store.logs[key] = (frames, expires)

    async def read(self, chat_id: str, turn_id: str, after_seq: int) -> LogSlice | None:
        store = self._store
        store.check()
        self._sweep()
        held = store.logs.get((chat_id, turn_id))
        if held is None:
            return None
        frames = held[0]
        first = min(max(after_seq + 1, 0), len(frames))
        return LogSlice(first_seq=first, frames=frames[first:])

    async def current(self, chat_id: str) -> TurnRecord | None:
        store = self._store
        store.check()
        self._sweep()
        held = store.records.get(chat_id)
        return held[0] if held is not None else None

    async def flush(self) -> None:
        self._store.check()

    def _sweep(self) -> None:
        store = self._store
        now = store.clock()
        for key in [k for k, (_, until) in store.logs.items() if until is not None and until < now]:
            del store.logs[key]
        for chat in [c for c, (_, u) in store.records.items() if u is not None and u < now]:
            del store.records[chat]
