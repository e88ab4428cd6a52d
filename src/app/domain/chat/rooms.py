"""The rooms of this process, one per chat with a connection or a turn here, and the
process-wide machinery they share: the lease keeper, the recovery sweeper, and what the other
processes say (frames, stops, reconnects)."""

from __future__ import annotations

import asyncio
import logging
import uuid

from app.domain.chat.finaliser import TurnFinaliser
from app.domain.chat.lease_keeper import LeaseKeeper
from app.domain.chat.recovery import Recovery
from app.domain.chat.room import ChatRoom, RoomServices
from app.domain.chat.turn import TurnServices
from app.domain.chats import TurnRecord
from app.domain.connection import Connection
from app.domain.errors import StoreUnavailable
from app.domain.ports import ChatFanOut, ChatRepository, TurnControl, TurnLease, TurnLog

logger = logging.getLogger(__name__)

#: Seconds turns interrupted at shutdown get to store their partial answers.
FINALISE_AT_SHUTDOWN = 5.0


def new_process_id() -> str:
    return uuid.uuid4().hex[:12]


class ChatRooms:
    def __init__(
        self,
        *,
        chats: ChatRepository,
        log: TurnLog,
        lease: TurnLease,
        fanout: ChatFanOut,
        control: TurnControl,
        turns: TurnServices,
        lease_ttl: float,
        process_id: str | None = None,
        alone: bool = False,
    ) -> None:
        self.process_id = process_id or new_process_id()
        self._log = log
        self._fanout = fanout
        self._rooms: dict[str | int, ChatRoom] = {}
        self._tasks: list[asyncio.Task[None]] = []
        keeper = LeaseKeeper(lease, log, lease_ttl, on_lost=self._lease_lost)
        finaliser = TurnFinaliser(chats=chats, log=log, emit=self.emit)
        self.recovery = Recovery(
            lease=lease,
            log=log,
            chats=chats,
            finaliser=finaliser,
            process_id=self.process_id,
            lease_ttl=lease_ttl,
            alone=alone,
        )
        self.keeper = keeper
        self._services = RoomServices(
            chats=chats,
            log=log,
            control=control,
            keeper=keeper,
            recovery=self.recovery,
            finaliser=finaliser,
            turns=turns,
            process_id=self.process_id,
            on_idle=self._forget,
        )
        fanout.attach(self)
        control.attach(self)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start renewing leases and sweeping for turns nobody will finish."""
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self.keeper.run()),
            loop.create_task(self.recovery.run()),
        ]

    async def drain(self, grace: float) -> None:
        """Running turns get ``grace`` seconds to finish; the rest are interrupted and store
        what they said so far (``interrupted``)."""
        running = self._running()
        if running:
            _, late = await asyncio.wait(running, timeout=grace)
            if late:
                for room in list(self._rooms.values()):
                    if room.turn is not None:
                        room.turn.interrupt()
                await asyncio.wait(late, timeout=FINALISE_AT_SHUTDOWN)
        try:
            async with asyncio.timeout(FINALISE_AT_SHUTDOWN):
                await self._log.flush()
        except (TimeoutError, StoreUnavailable) as exc:
            logger.error("turn log not flushed at shutdown: %s", exc)

    async def aclose(self, grace: float = 0.0) -> None:
        """On shutdown: running turns get ``grace`` seconds, then end ``interrupted``."""
        await self.drain(grace)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for task in self._running():
            task.cancel()
        await self.keeper.aclose()

    def running_turns(self) -> list[asyncio.Task[None]]:
        """The tasks of the turns this process runs now."""
        return self._running()

    def _running(self) -> list[asyncio.Task[None]]:
        return [
            room.turn.task
            for room in self._rooms.values()
            if room.turn is not None and room.turn.task is not None and not room.turn.task.done()
        ]

    # -- connections -------------------------------------------------------------------------

    async def join(self, connection: Connection) -> ChatRoom:
        chat_id = connection.chat_id
        key: str | int = chat_id if chat_id is not None else connection.id
        room = self._rooms.get(key)
        joining = room is None and chat_id is not None
        if room is None:
            room = self._rooms[key] = ChatRoom(key, chat_id, self._services)
        # In the room before any await: a room without connections may be forgotten meanwhile.
        room.add(connection)
        if joining and chat_id is not None:
            try:
                await self._fanout.join(chat_id)
            except StoreUnavailable as exc:
                logger.error("chat %s: other processes' frames will not arrive: %s", chat_id, exc)
        return room

    def room_of(self, connection: Connection) -> ChatRoom:
        chat_id = connection.chat_id
        return self._rooms[chat_id if chat_id is not None else connection.id]

    def leave(self, connection: Connection) -> None:
        room = self._rooms.get(
            connection.chat_id if connection.chat_id is not None else connection.id
        )
        if room is not None:
            room.discard(connection)

    def _forget(self, room: ChatRoom) -> None:
        if self._rooms.get(room.key) is room:
            del self._rooms[room.key]
            if room.chat_id is not None:
                task = asyncio.get_running_loop().create_task(self._leave(room.chat_id))
                _background.add(task)
                task.add_done_callback(_background.discard)

    async def _leave(self, chat_id: str) -> None:
        if chat_id in self._rooms:
            return  # a connection came back meanwhile
        try:
            await self._fanout.leave(chat_id)
        except StoreUnavailable as exc:
            logger.warning("chat fan-out: leaving chat %s failed: %s", chat_id, exc)

    # -- what other processes say (FanOutListener, ControlListener) -------------------------

    def on_frames(self, chat_id: str, turn_id: str, first_seq: int, frames: list[bytes]) -> None:
        room = self._rooms.get(chat_id)
        if room is not None:
            room.on_remote(turn_id, first_seq, frames)

    def on_resync(self) -> None:
        for room in list(self._rooms.values()):
            room.resync()

    def on_stop(self, chat_id: str) -> None:
        room = self._rooms.get(chat_id)
        if room is not None:
            room.on_stop()

    # -- the finaliser's frames --------------------------------------------------------------

    def emit(self, record: TurnRecord, seq: int, frame: bytes) -> None:
        """A frame of a turn this process finishes: to the chat's room here, and everywhere."""
        room = self._rooms.get(record.chat_id)
        if room is not None:
            room.on_remote(record.turn_id, seq, [frame])
        self._log.append(record.chat_id, record.turn_id, seq, frame)

    def _lease_lost(self, chat_id: str, holder: str) -> None:
        room = self._rooms.get(chat_id)
        if room is not None and room.turn is not None and room.turn.holder == holder:
            room.turn.interrupt()


_background: set[asyncio.Task[None]] = set()
