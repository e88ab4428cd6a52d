"""What reading a turn log gives back, and how frames are recognised in it."""

from __future__ import annotations

import msgspec

_CLOSE = b'{"type":"close"'
_END = b'{"type":"end"'
_STREAM = b'{"type":"stream"'


class LogSlice(msgspec.Struct, frozen=True):
    """Frames of one turn, contiguous, the first at position ``first_seq``."""

    first_seq: int
    frames: list[bytes]

    @property
    def next_seq(self) -> int:
        return self.first_seq + len(self.frames)

    def covers(self, after_seq: int) -> bool:
        """Whether every logged frame after ``after_seq`` is here."""
        return self.first_seq <= after_seq + 1

    def after(self, after_seq: int) -> list[bytes]:
        return self.frames[max(0, after_seq + 1 - self.first_seq) :]


def is_close(frame: bytes) -> bool:
    return frame.startswith(_CLOSE)


def is_end(frame: bytes) -> bool:
    return frame.startswith(_END)


def is_stream(frame: bytes) -> bool:
    return frame.startswith(_STREAM)


class _Said(msgspec.Struct):
    message: str = ""
    status: str | None = None
    message_id: int | None = None


_decode_said = msgspec.json.Decoder(_Said).decode


def said(frame: bytes) -> tuple[str, str | None, int | None]:
    """A chat frame's ``message``, ``status`` and ``message_id``."""
    decoded = _decode_said(frame)
    return decoded.message, decoded.status, decoded.message_id
