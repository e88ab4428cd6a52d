"""Keeps tokens out of logs, at every level, whatever carried them.

What carries a token into a log line, and where (``FLOWGATE_LOG_LEVEL=DEBUG`` shows them all):
uvicorn logs each WebSocket's request line with its query (``t=``); at DEBUG the websockets
protocol under uvicorn logs every handshake header (``< authorization: Bearer ...``,
``< cookie: access_token_cookie=...``) and the start and end of every frame (an ``auth``
frame's token); an exception's message or a repr of the ASGI scope can hold any of them.

:func:`redact_record` rewrites a record before it is formatted: its message with its
arguments, its exception text and stack, and its extra fields. The log formatter
(``app.api.logs``) calls it on every record and passes the finished line through
:func:`redact_jwts` once more, as the last line of defence.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping
from typing import Any

REDACTED = "[redacted]"

# A quote as it appears in a message, a repr or JSON already escaped once: ' " \' \"
_Q = r"""\\?['"]"""
# Not ``[redacted]`` itself: redacting twice changes nothing.
_DONE_ALREADY = r"(?!\[redacted\])"
# ``t=`` in a URL's query, or first in a bare query string (an ASGI scope's ``query_string``).
_QUERY_TOKEN = re.compile(
    rf"((?:[?&]|query_string{_Q}?\s*[:=]\s*b?{_Q})(?:t|%74)=){_DONE_ALREADY}[^&\s\"'#]*"
)
# ``authorization: Bearer x``, ``'authorization': 'Bearer x'``, ``(b'authorization', b'Bearer x')``
_AUTHORIZATION = re.compile(
    rf"(\b(?:proxy-)?authorization(?::\s*|=|{_Q}\s*[:,]\s*b?{_Q}))"
    r"(?!(?:(?:bearer|basic|digest|token)\s+)?\[redacted\])"
    r"(?:(bearer|basic|digest|token)(\s+))?"
    r"""[^\s'"\\,;)}\]]+""",
    re.IGNORECASE,
)
# A Cookie (or Set-Cookie) header: its whole value, whichever cookies it holds.
_COOKIE_HEADER = re.compile(
    rf"(\b(?:set-)?cookie(?::\s*|{_Q}\s*[:,]\s*b?{_Q}))" r"""[^'"\\\r\n]*""",
    re.IGNORECASE,
)
# The token cookie wherever it appears (a parsed cookie dict, a cookie string).
_TOKEN_COOKIE = re.compile(
    rf"(\baccess_token_cookie(?:=|{_Q}?\s*[:,]\s*b?{_Q}?)){_DONE_ALREADY}"
    r"""[^;\s'"\\,&)}\]]+""",
    re.IGNORECASE,
)
# A token field in JSON or a repr (the ``auth`` frame: ``{"action": "auth", "token": "..."}``,
# a parsed query ``{'t': '...'}``), and a token in ``key=value`` form.
_TOKEN_FIELD = re.compile(
    rf"({_Q}(?:t|[a-z_]*token|api[_-]?key|secret|password){_Q}\s*:\s*b?{_Q})" r"""[^'"\\]*""",
    re.IGNORECASE,
)
_FIELD_WORDS = ("token", "key", "secret", "password", "'t'", '"t"', "\\'t\\'", '\\"t\\"')
_TOKEN_PARAM = re.compile(
    rf"(\b(?:access_|refresh_|id_)?token=){_DONE_ALREADY}[^&\s'\"\\,;]+", re.IGNORECASE
)
# Anything shaped like a JWT: three base64url segments, the first a JSON object (``eyJ``).
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")


def _authorization(match: re.Match[str]) -> str:
    scheme = f"{match[2]}{match[3]}" if match[2] else ""
    return f"{match[1]}{scheme}{REDACTED}"


def redact_jwts(text: str) -> str:
    return _JWT.sub(REDACTED, text) if "eyJ" in text else text


def redact(text: str) -> str:
    """``text`` with every token this module knows how to find replaced by ``[redacted]``.

    Each pattern runs only when a word it needs is in the text: most lines hold none, and a
    log line is formatted on the server's loop."""
    lowered = text.lower()
    if "t=" in lowered or "%74=" in lowered:
        text = _QUERY_TOKEN.sub(rf"\g<1>{REDACTED}", text)
    if "token=" in lowered:
        text = _TOKEN_PARAM.sub(rf"\g<1>{REDACTED}", text)
    if "authorization" in lowered:
        text = _AUTHORIZATION.sub(_authorization, text)
    if "cookie" in lowered:
        text = _COOKIE_HEADER.sub(rf"\g<1>{REDACTED}", text)
        if "access_token_cookie" in lowered:
            text = _TOKEN_COOKIE.sub(rf"\g<1>{REDACTED}", text)
    if ("'" in text or '"' in text) and any(word in lowered for word in _FIELD_WORDS):
        text = _TOKEN_FIELD.sub(rf"\g<1>{REDACTED}", text)
    return redact_jwts(text)


def _redact_frame(frame: Any) -> Any:
    """A websockets ``Frame`` with its payload redacted *before* it is printed: its ``str``
    shows only the start and the end of a long payload, which would hide a token's middle from
    the patterns and leave its end (the signature's last characters) in the line."""
    text = bytes(frame.data).decode("utf-8", "surrogateescape")
    redacted = redact(text)
    if redacted == text:
        return frame
    return dataclasses.replace(frame, data=redacted.encode("utf-8", "surrogateescape"))


def _is_frame(value: object) -> bool:
    return (
        hasattr(value, "opcode")
        and dataclasses.is_dataclass(value)
        and isinstance(getattr(value, "data", None), bytes | bytearray | memoryview)
    )


def _safe_arg(value: object) -> object:
    # Strings need nothing here: the message they are formatted into is redacted whole.
    if isinstance(value, str | int | float) or not _is_frame(value):
        return value
    return _redact_frame(value)


# A mapping's key, or the first of a pair (a header list), that names a credential: its value
# goes whatever it looks like.
_SECRET_NAME = re.compile(
    r"(?:proxy-)?authorization|(?:set-)?cookie|access_token_cookie|t|[a-z_]*token"
    r"|api[_-]?key|secret|password",
    re.IGNORECASE,
)


def _name(key: object) -> str:
    return key.decode("latin-1") if isinstance(key, bytes | bytearray) else str(key)


def safe_value(value: object) -> object:
    """An extra field's value, redacted; anything but plain data becomes its redacted ``str``."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {
            _name(k): REDACTED if _SECRET_NAME.fullmatch(_name(k)) else safe_value(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        if len(value) == 2 and isinstance(value[0], str | bytes | bytearray):
            if _SECRET_NAME.fullmatch(_name(value[0])):
                return [_name(value[0]), REDACTED]
        return [safe_value(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return redact(bytes(value).decode("utf-8", "replace"))
    return redact(str(value))


# Attributes every LogRecord has; the others are the ``extra`` fields of the logging call.
STANDARD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
_DONE = "_flowgate_redacted"
#: Set by :func:`redact_record`: the names of the record's extra fields, in their order.
EXTRA = "_flowgate_extra"


def redact_record(record: logging.LogRecord) -> None:
    """Rewrite ``record`` in place so that no formatter can write a token from it: the message
    is formatted with its (redacted) arguments and redacted again, the exception text and the
    stack are rendered and redacted, and so are the extra fields. Idempotent."""
    if record.__dict__.get(_DONE):
        return
    args = record.args
    if isinstance(args, Mapping):
        args = {k: _safe_arg(v) for k, v in args.items()}
    elif isinstance(args, tuple):
        args = tuple(_safe_arg(a) for a in args)
    try:
        message = str(record.msg) % args if args else str(record.msg)
    except Exception:  # a bad format string: show it and its arguments rather than fail
        message = f"{record.msg!r} % {args!r}"
    record.msg = redact(message)
    record.args = None
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    attributes = record.__dict__
    extra = [key for key in attributes if key not in STANDARD_ATTRIBUTES]
    for key in extra:
        attributes[key] = safe_value(attributes[key])
    attributes[EXTRA] = extra
    attributes[_DONE] = True


class RedactTokens(logging.Filter):
    """:func:`redact_record` as a filter, for a handler whose formatter is not flowgate's."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True
