"""Tokens never reach a log line, whatever shape the record has."""

from __future__ import annotations

import logging

from app.api.log_redaction import RedactTokens, redact

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"


def test_redact_keeps_the_rest_of_the_url() -> None:
    url = f"/api/v1/chat/f1?t={TOKEN}&chat_id=c1"
    assert redact(url) == "/api/v1/chat/f1?t=[redacted]&chat_id=c1"
    assert (
        redact(f"/api/v1/chat/f1?chat_id=c1&t={TOKEN}") == "/api/v1/chat/f1?chat_id=c1&t=[redacted]"
    )
    assert redact("/api/v1/chat/f1?chat_id=c1&at=keep") == "/api/v1/chat/f1?chat_id=c1&at=keep"


def test_filter_rewrites_messages_and_arguments() -> None:
    records = [
        logging.LogRecord(
            "uvicorn.error", 20, "", 0, '%s - "WebSocket %s"', ("1.2.3.4", f"/x?t={TOKEN}"), None
        ),
        logging.LogRecord("uvicorn.error", 20, "", 0, f"GET /x?t={TOKEN}", None, None),
        logging.LogRecord(
            "uvicorn.error", 20, "", 0, "%(path)s", ({"path": f"/x?t={TOKEN}"},), None
        ),
    ]
    for record in records:
        assert RedactTokens().filter(record)
        assert TOKEN not in record.getMessage()
        assert "[redacted]" in record.getMessage()
