"""What a process knows of a chat's current turn: its frames by position, in order.

A room's view is fed by the turn itself when the turn runs here, and otherwise by the frames
other processes publish (and the turn log, for whatever publishing missed). It takes each
frame once: a duplicate is dropped, a frame past a gap waits until the gap is filled.
"""

from __future__ import annotations

from app.domain.turn_log import is_close


class TurnView:
    __slots__ = ("base", "ended", "frames", "pending", "turn_id")

    def __init__(self, turn_id: str, base: int = 0) -> None:
        self.turn_id = turn_id
        #: The position of ``frames[0]``: 0 unless the start of the turn could not be had.
        self.base = base
        self.frames: list[bytes] = []
        #: Frames past a gap, by position.
        self.pending: dict[int, bytes] = {}
        #: Whether the turn's ``close`` was seen (or the turn was given up as lost).
        self.ended = False

    @property
    def next_seq(self) -> int:
        return self.base + len(self.frames)

    def accept(self, seq: int, frame: bytes) -> list[tuple[int, bytes]]:
        """Take one frame; the frames that are now next in order (none if it waits or is old)."""
        next_seq = self.next_seq
        if seq < next_seq or self.ended:
            return []
        if seq > next_seq:
            self.pending[seq] = frame
            return []
        taken = [(seq, frame)]
        self._append(frame)
        pending = self.pending
        while pending:
            follows = pending.pop(self.next_seq, None)
            if follows is None:
                break
            taken.append((self.next_seq, follows))
            self._append(follows)
        return taken

    def accept_own(self, seq: int, frame: bytes) -> None:
        """Take a frame of the turn running in this process: the next one, but for a frame
        the view has already (``accept``'s rules then). Per piece, so nothing is built."""
        if seq == self.base + len(self.frames) and not self.pending and not self.ended:
            self._append(frame)
        else:
            self.accept(seq, frame)

    def skip_gap(self) -> list[tuple[int, bytes]]:
        """Give up on the frames of a gap that cannot be filled: continue after it."""
        if not self.pending:
            return []
        first = min(self.pending)
        self.base, self.frames = first, []
        return self.accept(first, self.pending.pop(first))

    def after(self, after_seq: int) -> list[bytes] | None:
        """The frames after position ``after_seq``; None if the view lacks some of them."""
        if self.base > after_seq + 1:
            return None
        return self.frames[after_seq + 1 - self.base :]

    def _append(self, frame: bytes) -> None:
        self.frames.append(frame)
        if is_close(frame):
            self.ended = True
            self.pending.clear()
