"""Keeps tokens out of logs: the ``t`` query parameter is redacted from every logged URL."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

_TOKEN_IN_QUERY = re.compile(r"([?&]t=)[^&\s\"']*")
REDACTED = "[redacted]"


def redact(text: str) -> str:
    return _TOKEN_IN_QUERY.sub(rf"\g<1>{REDACTED}", text)


class RedactTokens(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, Mapping):
            record.args = {
                k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()
            }
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def install() -> None:
    """Attach the filter to uvicorn's loggers, which log each WebSocket's path with its query."""
    for name in ("uvicorn.error", "uvicorn.access", "uvicorn", "litestar"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())
