"""Encodes the frames of one turn: every ChatResponse field present, one ``turn_id``, and each
frame's position ``seq`` (0 for ``begin``, then 1, 2, ... with no gaps)."""

from __future__ import annotations

from app.domain import frames
from app.domain.chats import Category
from app.domain.frames import ChatFrame, ErrorCode, ErrorFrame

# Strings no answer contains (NULs), to find where ``message`` and ``seq`` sit in an encoded
# frame: a ``stream`` frame is a per-turn template with the piece and its position spliced in.
_MESSAGE_MARK = "\x00m\x00"
_ENCODED_MESSAGE_MARK = frames.encode(_MESSAGE_MARK)
_SEQ_MARK = 1_000_000_007  # an int no turn reaches, replaced the same way
_ENCODED_SEQ_MARK = str(_SEQ_MARK).encode()
_encode = frames.ENCODER.encode


class TurnFrames:
    """Numbers and encodes a turn's frames; ``next_seq`` is the position of the next one."""

    __slots__ = ("_stream_template", "chat_id", "flow_id", "next_seq", "turn_id", "user_id")

    def __init__(
        self, *, flow_id: str, chat_id: str | None, user_id: str, turn_id: str, next_seq: int = 0
    ) -> None:
        self.flow_id = flow_id
        self.chat_id = chat_id
        self.user_id = user_id
        self.turn_id = turn_id
        self.next_seq = next_seq
        self._stream_template: tuple[bytes, bytes, bytes] | None = None

    def frame(
        self,
        type_: str,
        message: str,
        *,
        category: str = Category.ANSWER,
        is_bot: bool = True,
        message_id: int | None = None,
        status: str | None = None,
        numbered: bool = True,
    ) -> bytes:
        """The next frame of the turn; ``numbered=False``: a frame of a stored turn sent again
        (a repeated ``client_msg_id``), with no position, since it is a summary of the turn,
        not one of its frames."""
        seq = self._take() if numbered else None
        return self._encode(type_, message, category, is_bot, message_id, status, seq)

    def stream(self, piece: str) -> bytes:
        """A ``stream`` frame: the per-piece cost of a streamed answer, so only ``message`` and
        ``seq`` are encoded per piece; the rest once per turn."""
        template = self._stream_template
        if template is None:
            encoded = self._encode(
                "stream", _MESSAGE_MARK, Category.ANSWER, True, None, None, _SEQ_MARK
            )
            before, _, rest = encoded.partition(_ENCODED_MESSAGE_MARK)
            middle, _, after = rest.partition(_ENCODED_SEQ_MARK)
            template = self._stream_template = (before, middle, after)
        before, middle, after = template
        return b"".join((before, _encode(piece), middle, str(self._take()).encode(), after))

    def begin(self, question: str, question_id: int | None) -> bytes:
        return self.frame(
            "begin", question, category=Category.QUESTION, is_bot=False, message_id=question_id
        )

    def failed(self, message: str) -> bytes:
        """A ``turn_failed`` error, sent as one of the turn's frames (it has a position)."""
        return _encode(
            ErrorFrame(
                code=ErrorCode.TURN_FAILED, message=message, turn_id=self.turn_id, seq=self._take()
            )
        )

    def _take(self) -> int:
        seq = self.next_seq
        self.next_seq = seq + 1
        return seq

    def _encode(
        self,
        type_: str,
        message: str,
        category: str,
        is_bot: bool,
        message_id: int | None,
        status: str | None,
        seq: int | None,
    ) -> bytes:
        return _encode(
            ChatFrame(
                type=type_,
                category=category,
                is_bot=is_bot,
                message=message,
                intermediate_steps="",
                message_id=message_id,
                chat_id=self.chat_id,
                flow_id=self.flow_id,
                user_id=self.user_id,
                turn_id=self.turn_id,
                seq=seq,
                status=status,
            )
        )
