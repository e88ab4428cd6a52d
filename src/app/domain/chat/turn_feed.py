"""What a room knows of its chat's current turn when that turn runs in another process.

The feed takes the frames the other processes publish, in order and once each (a
:class:`~app.domain.chat.turn_view.TurnView`), and reads from the turn log whatever publishing
missed: the start of a turn joined late, a gap, the end of the last turn before the next one's
frames, everything after a reconnect. Batches that arrive while it reads wait in an inbox and
are taken after, in order. What cannot be had from the log is declared lost (the room tells its
sockets ``resume_unavailable``) and the feed goes on after it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Protocol

from app.domain.chat.turn_view import TurnView
from app.domain.chats import TurnState
from app.domain.errors import StoreUnavailable
from app.domain.ports import TurnLog
from app.domain.turn_log import LogSlice

logger = logging.getLogger(__name__)

#: A gap the turn log cannot fill yet is tried again this many times, this far apart.
GAP_RETRIES = 5
GAP_RETRY_DELAY = 0.2
#: How long the feed keeps trying to read the turn log while its store is away.
LOG_READ_BUDGET = 30.0
#: After a reconnect that finds no record of the chat's turn: how long, and how often, to look
#: again for the log the turn's process writes anew.
RESYNC_WAIT = 10.0
RESYNC_POLL = 0.5

# An inbox entry: frames of a turn from ``first_seq`` on; ``first_seq`` -1 (no frames) asks to
# catch up with that turn from the log.
_Batch = tuple[str, int, list[bytes]]


class FeedOwner(Protocol):
    """What the feed asks of its room."""

    @property
    def runs_turn(self) -> bool:
        """Whether the chat's turn runs in this process (then the feed has nothing to do)."""
        ...

    def deliver(self, turn_id: str, seq: int, frame: bytes) -> None:
        """The next frame of the turn, in order: to the room's sockets."""
        ...

    def frames_lost(self) -> None:
        """Frames the sockets should have had cannot be had."""
        ...

    def feed_settled(self) -> None:
        """The feed read what it had to read (the room may be idle now)."""
        ...


class TurnFeed:
    __slots__ = ("_inbox", "_log", "_owner", "_sync", "chat_id", "view")

    def __init__(self, chat_id: str | None, log: TurnLog, owner: FeedOwner) -> None:
        self.chat_id = chat_id
        self._log = log
        self._owner = owner
        #: The chat's current turn, wherever it runs.
        self.view: TurnView | None = None
        self._inbox: deque[_Batch] | None = None
        self._sync: asyncio.Task[None] | None = None

    @property
    def reading(self) -> bool:
        """Whether it is reading the log (the room is not idle meanwhile)."""
        return self._sync is not None

    def begin_local(self, turn_id: str) -> TurnView:
        """The chat's turn now runs here: its frames come from the turn itself."""
        self.view = TurnView(turn_id)
        return self.view

    def on_remote(self, turn_id: str, first_seq: int, batch: list[bytes]) -> None:
        self._enqueue((turn_id, first_seq, batch))

    def resync(self) -> None:
        """The fan-out reconnected: what it missed is in the log."""
        if self.chat_id is not None:
            task = asyncio.get_running_loop().create_task(self._resync())
            _background.add(task)
            task.add_done_callback(_background.discard)

    async def catch_up(self) -> None:
        """Make the view the chat's current turn, as the log has it (a room that just joined
        knows nothing of a turn running elsewhere)."""
        if self._owner.runs_turn or self.chat_id is None:
            return
        view = self.view
        record = await self._log.current(self.chat_id)
        if record is None or (view is not None and view.turn_id == record.turn_id and view.ended):
            return
        if record.state is TurnState.ENDED and (view is None or view.turn_id != record.turn_id):
            return  # an ended turn is in the history
        self._enqueue((record.turn_id, -1, []))
        sync = self._sync
        if sync is not None:
            await asyncio.wait_for(asyncio.shield(sync), LOG_READ_BUDGET)

    async def frames_after(self, turn_id: str, after_seq: int) -> list[bytes] | None:
        """The frames of ``turn_id`` after ``after_seq``, from the view or the log; None if they
        cannot all be had (or the client names frames the turn never logged)."""
        view = self.view
        if view is not None and view.turn_id == turn_id:
            rest = view.after(after_seq)
            if rest is None or (view.ended and after_seq >= view.next_seq):
                return None
            return rest
        if self.chat_id is None:
            return None
        logged = await self._log.read(self.chat_id, turn_id, after_seq)
        if logged is None or not logged.covers(after_seq) or after_seq >= logged.next_seq:
            return None
        return logged.after(after_seq)

    # -- the inbox -------------------------------------------------------------------------

    async def _resync(self) -> None:
        """Catch up with the chat's current turn from the log. If the store lost the log (it
        restarted), the process running the turn writes it again from what it kept, within a
        few seconds: wait for that (or for the turn's frames to flow again) before declaring
        the frames lost."""
        assert self.chat_id is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RESYNC_WAIT
        while True:
            try:
                record = await self._log.current(self.chat_id)
            except StoreUnavailable:
                return  # the next reconnect tries again
            view = self.view
            if record is not None:
                if view is None or view.turn_id != record.turn_id or not view.ended:
                    self._enqueue((record.turn_id, -1, []))
                return
            if view is None or view.ended or self._owner.runs_turn:
                return
            if loop.time() >= deadline:
                self._declare_lost(view)
                return
            seen = view.next_seq
            await asyncio.sleep(RESYNC_POLL)
            if self.view is not view or view.ended or view.next_seq != seen:
                return  # its frames flow again: the turn's process is alive and writing

    def _enqueue(self, batch: _Batch) -> None:
        if self._inbox is not None:
            self._inbox.append(batch)
            return
        if self._take(batch):
            return
        self._inbox = deque((batch,))
        self._sync = asyncio.get_running_loop().create_task(self._drain_inbox())

    def _take(self, batch: _Batch) -> bool:
        """Deliver a batch that continues the view; False if the log must be read first."""
        turn_id, first_seq, frames = batch
        view = self.view
        if view is None or view.turn_id != turn_id:
            if view is not None and not view.ended:
                return False  # the last turn's end is missing: from the log, first
            if first_seq != 0:
                return False
            view = self.view = TurnView(turn_id)
        elif first_seq < 0:
            return view.ended
        for i, frame in enumerate(frames):
            self._accept(view, first_seq + i, frame)
        return not view.pending

    async def _drain_inbox(self) -> None:
        inbox = self._inbox
        assert inbox is not None
        try:
            while inbox:
                batch = inbox[0]
                if not self._take(batch):
                    await self._fill(batch[0])
                    self._take(batch)
                inbox.popleft()
        except Exception:  # a room must go on serving its sockets whatever went wrong here
            logger.exception("chat %s: catching up with the turn log failed", self.chat_id)
        finally:
            self._inbox = None
            self._sync = None
            self._owner.feed_settled()

    async def _fill(self, turn_id: str) -> None:
        """Read from the log what the view lacks to take frames of ``turn_id``."""
        view = self.view
        if view is not None and view.turn_id != turn_id and not view.ended:
            await self._fill_gap(view)  # the last turn first, to its close
            if not view.ended:
                self._declare_lost(view)
        view = self.view
        if view is None or view.turn_id != turn_id:
            logged = await self._read(turn_id, -1)
            view = self.view = TurnView(turn_id, base=logged.first_seq if logged else 0)
            if logged is not None:
                for i, frame in enumerate(logged.frames):
                    self._accept(view, logged.first_seq + i, frame)
        if view.pending:
            await self._fill_gap(view)
            if view.pending:
                self._declare_lost(view)

    async def _fill_gap(self, view: TurnView) -> None:
        for attempt in range(GAP_RETRIES):
            after = view.next_seq - 1
            logged = await self._read(view.turn_id, after)
            if logged is not None and logged.covers(after):
                for offset, frame in enumerate(logged.after(after)):
                    self._accept(view, after + 1 + offset, frame)
            if view.ended or (not view.pending and logged is not None):
                return
            if attempt + 1 < GAP_RETRIES:
                await asyncio.sleep(GAP_RETRY_DELAY)

    async def _read(self, turn_id: str, after_seq: int) -> LogSlice | None:
        assert self.chat_id is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOG_READ_BUDGET
        delay = 0.1
        while True:
            try:
                return await self._log.read(self.chat_id, turn_id, after_seq)
            except StoreUnavailable:
                if loop.time() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _accept(self, view: TurnView, seq: int, frame: bytes) -> None:
        for ready_seq, ready in view.accept(seq, frame):
            self._owner.deliver(view.turn_id, ready_seq, ready)

    def _declare_lost(self, view: TurnView) -> None:
        """Frames the sockets should have had cannot be had: say so, then go on after them."""
        logger.warning("chat %s: frames of turn %s lost", self.chat_id, view.turn_id)
        self._owner.frames_lost()
        if view.pending:
            for seq, ready in view.skip_gap():
                self._owner.deliver(view.turn_id, seq, ready)
        else:
            view.ended = True


# Keeps one-shot tasks referenced until they finish (asyncio holds only weak references).
_background: set[asyncio.Task[None]] = set()
