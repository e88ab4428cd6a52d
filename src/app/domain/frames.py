"""The wire types of PROTOCOL.md §4–§5, as msgspec Structs with codecs built once.

Client frames are decoded in two steps: a tiny :class:`Envelope` finds the ``action`` (a frame
without one is a chat message, bisheng's form), then that action's own decoder validates it, so
that an ``invalid_message`` error can name the JSON path that failed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Union

import msgspec

# -- bounds of what a client sends ----------------------------------------------------------

#: Database ids and sequence numbers are 64-bit signed integers (PostgreSQL ``bigint``, SQLite
#: ``INTEGER``): a larger number would reach the driver and raise ``OverflowError`` there.
INT64_MAX = 2**63 - 1
#: How deep a client frame may nest (objects and arrays). The protocol's own frames nest three
#: levels; the rest is room for a feature's free-form ``inputs``.
MAX_DEPTH = 32
#: The longest token accepted anywhere (query, header, cookie, ``auth`` frame). A request line
#: is at most 8 KiB (``app run``), so no token that came in a URL is longer.
MAX_TOKEN_LENGTH = 8192

#: A message id (``before_id``, ``after_id``): ids start at 1.
MessageId = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
#: A turn's ``seq`` as a resume point: -1 (none seen) upwards.
Seq = Annotated[int, msgspec.Meta(ge=-1, le=INT64_MAX)]
#: Text that is stored: PostgreSQL's ``text`` cannot hold the NUL character.
_NO_NUL = r"^[^\x00]*$"


class TooDeep(ValueError):
    """A frame nests deeper than :data:`MAX_DEPTH`; answered ``invalid_message`` at ``$``."""


# A JSON string with its escapes (possessive quantifiers: no backtracking).
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
_RUN = re.compile(rb"\[+|\]+")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKETS_AS_SQUARE = bytes.maketrans(b"{}", b"[]")
_OPEN = ord("[")


def check_depth(raw: bytes | str, limit: int = MAX_DEPTH) -> None:
    """Raise :class:`TooDeep` if ``raw`` nests deeper than ``limit``, before it is decoded.

    msgspec has no depth limit: it recurses once per level, even through an unknown field it
    skips, and raises ``RecursionError`` about a thousand levels down (a 2 KB frame), which
    would crash the connection (1011) instead of answering it. So the depth is measured first,
    with C-speed passes and no Python loop per byte: a frame of at most ``limit`` characters
    needs nothing more (a ``count`` call costs ~1,000 instructions, most of what decoding such
    a frame does); one with no more than ``limit`` brackets needs two ``count`` calls;
    otherwise strings are cut out and every byte but the brackets dropped, a run of more than
    ``limit`` openers is refused at once, innermost pairs are removed a few times (which
    shrinks wide arrays to nothing), and the running depth of what is left is summed run by
    run.
    """
    if len(raw) <= limit:  # too short to hold more openers than that (ping, stop, ...)
        return
    if isinstance(raw, str):
        if raw.count("[") + raw.count("{") <= limit:
            return
        data = raw.encode("utf-8", "surrogatepass")
    elif raw.count(b"[") + raw.count(b"{") <= limit:
        return
    else:
        data = raw
    brackets = _STRING.sub(b"", data).translate(_BRACKETS_AS_SQUARE, _NOT_BRACKETS)
    too_deep = TooDeep(f"Frame nests deeper than {limit} levels - at `$`")
    if b"[" * (limit + 1) in brackets:
        raise too_deep
    removed = 0
    while brackets and removed < 3:
        brackets = brackets.replace(b"[]", b"")
        removed += 1
    if not brackets:  # empty after exactly ``removed`` rounds: that is its depth
        if removed > limit:
            raise too_deep
        return
    depth = 0
    for run in _RUN.findall(brackets):
        depth += len(run) if run[0] == _OPEN else -len(run)
        # Unbalanced input only ever counts too deep: it is not JSON anyway.
        if depth + removed > limit:
            raise too_deep


# -- client frames ------------------------------------------------------------------------


#: The longest ``action`` a frame may name.
ACTION_MAX_LENGTH = 64


class Envelope(msgspec.Struct):
    action: Annotated[str, msgspec.Meta(max_length=ACTION_MAX_LENGTH)] | None = None


class ChatRequest(msgspec.Struct):
    inputs: dict[str, Any]
    client_msg_id: (
        Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=_NO_NUL)] | None
    ) = None

    def __post_init__(self) -> None:
        text = self.inputs.get("input")
        if isinstance(text, str) and "\x00" in text:
            # Raised here, msgspec reports it as a ValidationError (invalid_message).
            raise ValueError("Expected a string without NUL characters - at `$.inputs.input`")

    @property
    def text(self) -> str:
        value = self.inputs.get("input")
        return value if isinstance(value, str) else ""


class StopRequest(msgspec.Struct):
    pass


class HistoryRequest(msgspec.Struct):
    before_id: MessageId | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 20


class ResumeRequest(msgspec.Struct):
    after_id: MessageId
    #: A turn the client saw frames of, and the last ``seq`` it saw (absent: none of them).
    turn_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    after_seq: Seq | None = None


class PingRequest(msgspec.Struct):
    pass


class AuthRequest(msgspec.Struct):
    token: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TOKEN_LENGTH)]


ENVELOPE_DECODER = msgspec.json.Decoder(Envelope)


# The actions every connection serves before its feature does, tagged for
# :func:`known_action_decoder`.
class PingFrame(PingRequest, tag_field="action", tag="ping"):
    pass


class AuthFrame(AuthRequest, tag_field="action", tag="auth"):
    pass


def known_action_decoder(
    actions: Mapping[str | None, type[msgspec.Struct]],
) -> msgspec.json.Decoder[Any] | None:
    """One decoder for a frame that names one of ``actions`` or a control action: the request
    in one pass, instead of the envelope and then the action's type (two decodes of the frame,
    ~2,000 instructions more per frame).

    Each action's type gets a subclass tagged with its action (msgspec's tagged union on
    ``action``): the request a handler gets is an instance of the action's type, as from
    the action's own decoder. Whatever this decoder refuses (a frame without ``action``, an
    unknown or repeated one, a type error, not JSON) goes the long way, which names the error
    (:class:`app.domain.dispatcher.FrameDispatcher`); so does every frame of a feature whose
    types cannot be tagged (a field called ``action``, a tag of their own, unknown fields
    forbidden): None then.
    """
    tagged: list[type[msgspec.Struct]] = [PingFrame, AuthFrame]
    for action, request_type in actions.items():
        if action is None or action in ("ping", "auth") or len(action) > ACTION_MAX_LENGTH:
            continue  # the long way: no action, a control action, or one the envelope refuses
        config = getattr(request_type, "__struct_config__", None)
        if config is None or config.forbid_unknown_fields or config.tag_field is not None:
            return None  # not a Struct, or its own decoder checks fields this one would not
        try:
            tagged.append(
                msgspec.defstruct(
                    request_type.__name__,
                    [],
                    bases=(request_type,),
                    module=request_type.__module__,
                    tag_field="action",
                    tag=action,
                )
            )
        except (TypeError, ValueError):
            return None
    try:
        return msgspec.json.Decoder(Union[tuple(tagged)])  # noqa: UP007 (a runtime union)
    except (TypeError, ValueError):
        return None


# -- server frames ------------------------------------------------------------------------


class ChatFrame(msgspec.Struct, omit_defaults=True):
    """bisheng's ChatResponse: every field is always sent, null where it has no value, except
    ``first_seq``, sent only on a joined ``stream`` frame.

    ``seq`` numbers the positions of one turn from 0 (``begin``) upwards, with no gaps; a frame
    covers the positions ``first_seq`` to ``seq`` (just ``seq`` without ``first_seq``). A
    ``stream`` frame covers several when the socket pushed back and the pieces that waited
    were joined into it (:mod:`app.domain.connection`). Fields are in the order of
    PROTOCOL.md's example; ``type`` must stay first (receivers of the turn log recognise a
    frame's type by its first bytes).
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
    #: On a joined ``stream`` frame only: the position of its first piece (``seq`` is the last).
    first_seq: int | None = None


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
    """The ``code`` of an ``error`` frame (PROTOCOL.md §5); the socket stays open."""

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
    """``frame`` (a msgspec Struct, a dict, a list...) as the JSON bytes of one text frame."""
    return ENCODER.encode(frame)


def error(code: str, message: str, retry_after: float | None = None) -> bytes:
    """An ``error`` frame: ``{"type": "error", "code": code, "message": message}``."""
    return ENCODER.encode(ErrorFrame(code=code, message=message, retry_after=retry_after))
