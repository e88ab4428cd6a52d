"""Errors the domain raises; the API layer maps them to close codes and error frames."""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error the domain raises on purpose."""


class StoreUnavailable(DomainError):
    """A backing store (database, Redis, a model provider's host) cannot be reached.

    Adapters translate their driver's connection errors into this, so that admission can answer
    ``1013 service unavailable`` without knowing which driver failed.
    """


class InvalidToken(DomainError):
    """The token is missing, malformed, badly signed, expired or lacks ``exp``.

    The message is for logs only; clients are told just ``Unauthorized``.
    """


class NotFound(DomainError):
    """A flow, version or chat that the caller named does not exist."""


class InvalidGraph(DomainError):
    """A flow graph failed validation; ``problems`` names each node at fault."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class ChatTakenError(DomainError):
    """The chat id already belongs to another user or another flow."""


class ModelError(DomainError):
    """A chat model or translator call failed: timeout, HTTP error, broken stream.

    The message is shown to the user in the ``turn_failed`` error frame, so adapters write it
    for people and keep secrets (API keys, full URLs with credentials) out of it.
    """
