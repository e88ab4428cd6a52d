"""The fields that every log line of a connection or a turn carries.

``chat_id``, ``flow_id``, ``user_id`` are bound where a connection is admitted, ``turn_id`` (with
the others) where a turn starts. The log formatter (``app.api.logs``) reads them with
:func:`current` and writes them on each line. Standard library only, so the domain may bind.

The fields live in a :class:`contextvars.ContextVar`: an asyncio task copies its creator's
context when it is created, so a turn's task starts with its connection's fields, and what a
task binds stays in that task. In a task of its own (a connection's ASGI task, a turn's task)
:func:`bind` needs no reset: the task's context ends with it. Elsewhere, use :func:`bound`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token

Fields = Mapping[str, object]

_NONE: Fields = {}
# Never mutated: each bind sets a new dict, so a context copied into a task keeps its own.
_fields: ContextVar[Fields] = ContextVar("flowgate_log_fields", default=_NONE)


def bind(**fields: object) -> Token[Fields]:
    """Add ``fields`` to every line logged in this context from now on; a None value removes
    the field. The token undoes it (:func:`reset`)."""
    merged = dict(_fields.get())
    for key, value in fields.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return _fields.set(merged)


def reset(token: Token[Fields]) -> None:
    _fields.reset(token)


@contextmanager
def bound(**fields: object) -> Iterator[None]:
    """:func:`bind` for the ``with`` block only."""
    token = bind(**fields)
    try:
        yield
    finally:
        _fields.reset(token)


def current() -> Fields:
    """The fields bound in this context (read-only: do not mutate)."""
    return _fields.get()
