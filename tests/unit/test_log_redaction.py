"""Tokens never reach a log line, whatever carried them and whatever shape the record has."""

from __future__ import annotations

import logging
import sys

import pytest
from websockets.frames import Frame, Opcode

from app.api.log_redaction import REDACTED, RedactTokens, redact, redact_record

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"
SIGNATURE = TOKEN.split(".")[2]
# Not shaped like a JWT: only the pattern for where it sits can catch it.
OPAQUE = "opaque-secret-value-42"


def record(msg: object, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("uvicorn.error", logging.DEBUG, "", 0, msg, args or None, None)
    made.__dict__.update(extra)
    return made


def test_query_parameter_t_in_any_url() -> None:
    assert redact(f"/api/v1/chat/f1?t={OPAQUE}&chat_id=c1") == (
        f"/api/v1/chat/f1?t={REDACTED}&chat_id=c1"
    )
    assert redact(f"GET /x?chat_id=c1&t={OPAQUE} HTTP/1.1") == (
        f"GET /x?chat_id=c1&t={REDACTED} HTTP/1.1"
    )
    assert redact(f'"WebSocket /x?%74={OPAQUE}" [accepted]') == (
        f'"WebSocket /x?%74={REDACTED}" [accepted]'
    )
    assert redact(f"{{'query_string': b't={OPAQUE}&chat_id=c1'}}") == (
        f"{{'query_string': b't={REDACTED}&chat_id=c1'}}"
    )
    # Other parameters, and parameters that only end in ``t``, are kept.
    assert redact("/x?chat_id=c1&at=keep&limit=3") == "/x?chat_id=c1&at=keep&limit=3"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (f"< authorization: Bearer {OPAQUE}", f"< authorization: Bearer {REDACTED}"),
        (f"Authorization: bearer {OPAQUE}", f"Authorization: bearer {REDACTED}"),
        (f"Authorization: {OPAQUE}", f"Authorization: {REDACTED}"),
        (f"Proxy-Authorization: Basic {OPAQUE}", f"Proxy-Authorization: Basic {REDACTED}"),
        (
            f"{{'authorization': 'Bearer {OPAQUE}', 'host': 'h'}}",
            f"{{'authorization': 'Bearer {REDACTED}', 'host': 'h'}}",
        ),
        (
            f"[(b'authorization', b'Bearer {OPAQUE}'), (b'host', b'h')]",
            f"[(b'authorization', b'Bearer {REDACTED}'), (b'host', b'h')]",
        ),
        (
            f'{{"Authorization": "Bearer {OPAQUE}"}}',
            f'{{"Authorization": "Bearer {REDACTED}"}}',
        ),
    ],
)
def test_authorization_header_in_every_shape(line: str, expected: str) -> None:
    assert redact(line) == expected


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            f"< cookie: theme=dark; access_token_cookie={OPAQUE}; lang=en",
            f"< cookie: {REDACTED}",
        ),
        (f"Set-Cookie: access_token_cookie={OPAQUE}; Path=/", f"Set-Cookie: {REDACTED}"),
        (
            f"[(b'cookie', b'sid={OPAQUE}'), (b'host', b'h')]",
            f"[(b'cookie', b'{REDACTED}'), (b'host', b'h')]",
        ),
        (
            f"cookies={{'access_token_cookie': '{OPAQUE}', 'theme': 'dark'}}",
            f"cookies={{'access_token_cookie': '{REDACTED}', 'theme': 'dark'}}",
        ),
        (
            f"theme=dark; access_token_cookie={OPAQUE}",
            f"theme=dark; access_token_cookie={REDACTED}",
        ),
    ],
)
def test_cookie_header_and_token_cookie(line: str, expected: str) -> None:
    assert redact(line) == expected


def test_cookie_in_prose_is_kept() -> None:
    line = "the token comes from the query, the header or the cookie, in that order"
    assert redact(line) == line


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            f'{{"action": "auth", "token": "{OPAQUE}"}}',
            f'{{"action": "auth", "token": "{REDACTED}"}}',
        ),
        (
            f"{{'action': 'auth', 'token': '{OPAQUE}'}}",
            f"{{'action': 'auth', 'token': '{REDACTED}'}}",
        ),
        (  # JSON inside JSON, escaped once
            f'{{\\"action\\": \\"auth\\", \\"token\\": \\"{OPAQUE}\\"}}',
            f'{{\\"action\\": \\"auth\\", \\"token\\": \\"{REDACTED}\\"}}',
        ),
        (f'{{"access_token":"{OPAQUE}"}}', f'{{"access_token":"{REDACTED}"}}'),
        (
            f"query {{'t': '{OPAQUE}', 'chat_id': 'c1'}}",
            f"query {{'t': '{REDACTED}', 'chat_id': 'c1'}}",
        ),
        (f'{{"api_key": "{OPAQUE}"}}', f'{{"api_key": "{REDACTED}"}}'),
        (f"POST /refresh?token={OPAQUE}&x=1", f"POST /refresh?token={REDACTED}&x=1"),
    ],
)
def test_auth_frame_token_and_token_fields(line: str, expected: str) -> None:
    assert redact(line) == expected


def test_a_jwt_anywhere_is_redacted() -> None:
    assert redact(f"refused: bad token {TOKEN} (expired)") == (
        f"refused: bad token {REDACTED} (expired)"
    )
    assert redact(f"x{TOKEN}") == f"x{REDACTED}"
    # Text that merely starts like a JWT's header, without its three segments, is kept.
    assert redact("eyJhbGciOiJIUzI1NiJ9 alone") == "eyJhbGciOiJIUzI1NiJ9 alone"


def test_redacting_twice_changes_nothing() -> None:
    lines = [
        f"< authorization: Bearer {TOKEN}",
        f"/x?t={TOKEN}&chat_id=c",
        f"< cookie: access_token_cookie={TOKEN}",
        f"access_token_cookie={TOKEN}",
        f'{{"token": "{TOKEN}"}}',
        f"token={TOKEN}",
    ]
    for line in lines:
        once = redact(line)
        assert TOKEN not in once and SIGNATURE not in once, once
        assert redact(once) == once


def test_record_message_and_every_kind_of_argument() -> None:
    records = [
        record('%s - "WebSocket %s"', "1.2.3.4", f"/x?t={OPAQUE}"),
        record(f"GET /x?t={OPAQUE}"),
        record("%(path)s", {"path": f"/x?t={OPAQUE}"}),
        # websockets logs each handshake header as "< %s: %s": the name and value apart.
        record("< %s: %s", "authorization", f"Bearer {OPAQUE}"),
        record("< %s: %s", "cookie", f"access_token_cookie={OPAQUE}"),
        record("headers %r", [(b"authorization", f"Bearer {OPAQUE}".encode())]),
        record("token %s refused", TOKEN),
    ]
    for made in records:
        assert RedactTokens().filter(made)
        message = made.getMessage()
        assert OPAQUE not in message and TOKEN not in message, message
        assert REDACTED in message


def test_a_long_frame_is_redacted_before_websockets_elides_it() -> None:
    # websockets prints a long payload's start and end only: the end of the signature would
    # stay in the line, with the token's middle (and its shape) cut out of it.
    payload = f'{{"inputs": {{"input": "{"words " * 20}my token is {TOKEN}"}}}}'
    frame = Frame(Opcode.TEXT, payload.encode())
    assert SIGNATURE[-12:] in str(frame) and TOKEN not in str(frame)  # what websockets prints
    made = record("< %s", frame)
    redact_record(made)
    message = made.getMessage()
    assert SIGNATURE[-12:] not in message and "words" in message, message
    auth = record("> %s", Frame(Opcode.TEXT, f'{{"action":"auth","token":"{TOKEN}"}}'.encode()))
    redact_record(auth)
    assert SIGNATURE[-8:] not in auth.getMessage() and REDACTED in auth.getMessage()
    close = Frame(Opcode.CLOSE, b"\x03\xe8bye")
    closing = record("< %s", close)
    redact_record(closing)
    assert closing.getMessage() == f"< {close}"  # a payload with nothing to redact: as it was


def test_exception_text_traceback_and_stack() -> None:
    try:
        raise ValueError(f"cannot verify {TOKEN} from ?t={OPAQUE}")
    except ValueError:
        made = logging.LogRecord(
            "app", logging.ERROR, __file__, 1, "failed", None, sys.exc_info(), sinfo=f"t={TOKEN}"
        )
    made.stack_info = f"stack with Authorization: Bearer {OPAQUE}"
    redact_record(made)
    assert made.exc_text is not None and "ValueError" in made.exc_text
    assert "Traceback" in made.exc_text
    assert TOKEN not in made.exc_text and OPAQUE not in made.exc_text
    assert made.stack_info is not None and OPAQUE not in made.stack_info
    rendered = logging.Formatter().format(made)
    assert TOKEN not in rendered and OPAQUE not in rendered and "ValueError" in rendered


def test_extra_fields_of_any_type() -> None:
    class Scope:
        def __str__(self) -> str:
            return f"scope with query_string=b't={OPAQUE}'"

    made = record(
        "x",
        url=f"/x?t={OPAQUE}",
        headers={"authorization": f"Bearer {OPAQUE}", "n": 3, "Cookie": OPAQUE},
        raw_headers=[(b"authorization", OPAQUE.encode()), (b"host", b"h")],
        query={"t": OPAQUE, "chat_id": "c1"},
        cookies=[f"access_token_cookie={OPAQUE}"],
        scope=Scope(),
        count=3,
    )
    redact_record(made)
    extra = made.__dict__
    assert extra["url"] == f"/x?t={REDACTED}"
    assert extra["headers"] == {"authorization": REDACTED, "n": 3, "Cookie": REDACTED}
    assert extra["raw_headers"] == [["authorization", REDACTED], ["host", "h"]]
    assert extra["query"] == {"t": REDACTED, "chat_id": "c1"}
    assert extra["cookies"] == [f"access_token_cookie={REDACTED}"]
    assert OPAQUE not in extra["scope"]
    assert extra["count"] == 3


def test_a_bad_format_string_does_not_raise() -> None:
    made = record("%d items from %s", "many", f"/x?t={OPAQUE}")
    redact_record(made)  # logging itself would print a "--- Logging error ---" traceback
    assert OPAQUE not in made.getMessage() and "%d items" in made.getMessage()
