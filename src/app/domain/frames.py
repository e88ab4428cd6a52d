"""The wire types of PROTOCOL.md §4–§5, as msgspec Structs with codecs built once.

Client frames are decoded in two steps: a tiny :class:`Envelope` finds the ``action`` (a frame
without one is a chat message, bisheng's form), then that action's own decoder validates it, so
that an ``invalid_message`` error can name the JSON path that failed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec

# -- client frames ------------------------------------------------------------------------


class Envelope(msgspec.Struct):
    action: str | None = None


class ChatRequest(msgspec.Struct):
    inputs: dict[str, Any]
    client_msg_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None

    @property
    def text(self) -> str:
        value = self.inputs.get("input")
        return value if isinstance(value, str) else ""


class StopRequest(msgspec.Struct):
    pass


class HistoryRequest(msgspec.Struct):
    before_id: int | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 20


class ResumeRequest(msgspec.Struct):
    after_id: Annotated[int, msgspec.Meta(ge=0)]
    #: A turn the client saw frames of, and the last ``seq`` it saw (absent: none of them).
    turn_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    after_seq: Annotated[int, msgspec.Meta(ge=-1)] | None = None


class PingRequest(msgspec.Struct):
    pass


class AuthRequest(msgspec.Struct):
    token: Annotated[str, msgspec.Meta(min_length=1)]


ENVELOPE_DECODER = msgspec.json.Decoder(Envelope)


# -- server frames ------------------------------------------------------------------------


class ChatFrame(msgspec.Struct):
    """bisheng's ChatResponse: every field is always sent, null where it has no value.

    ``seq`` numbers the frames of one turn from 0 (``begin``) upwards, with no gaps. Fields
    are in the order of PROTOCOL.md's example; ``type`` must stay first (receivers of the
    turn log recognise a frame's type by its first bytes).
    """

    type: str
    category: str
    is_bot: bool
    message: str
    intermediate_steps: str
    message_id: int | None
    chat_id: str | None
    flow_id: str
    user_id: str
    turn_id: str
    seq: int | None
    status: str | None


class HistoryItem(msgspec.Struct):
    message_id: int
    is_bot: bool
    category: str
    message: str
    status: str | None
    created_at: datetime


class HistoryFrame(msgspec.Struct, tag_field="type", tag="history"):
    messages: list[HistoryItem]
    has_more: bool


class PongFrame(msgspec.Struct, tag_field="type", tag="pong"):
    pass


class ErrorFrame(msgspec.Struct, tag_field="type", tag="error", omit_defaults=True):
    code: str
    message: str
    retry_after: float | None = None
    #: Set on a ``turn_failed`` sent as one of a turn's frames (it has a position too).
    turn_id: str | None = None
    seq: int | None = None


class ErrorCode:
    INVALID_JSON = "invalid_json"
    INVALID_MESSAGE = "invalid_message"
    UNKNOWN_ACTION = "unknown_action"
    BUSY = "busy"
    RATE_LIMITED = "rate_limited"
    NOT_RUNNING = "not_running"
    TURN_FAILED = "turn_failed"
    RESUME_UNAVAILABLE = "resume_unavailable"
    UNAUTHORIZED = "unauthorized"


ENCODER = msgspec.json.Encoder()
PONG = ENCODER.encode(PongFrame())


def encode(frame: object) -> bytes:
    return ENCODER.encode(frame)


def error(code: str, message: str, retry_after: float | None = None) -> bytes:
    return ENCODER.encode(ErrorFrame(code=code, message=message, retry_after=retry_after))
