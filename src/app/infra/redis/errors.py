"""Redis errors as the domain knows them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from redis import exceptions as redis_errors

from app.domain.errors import StoreUnavailable

UNAVAILABLE = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
    redis_errors.MasterDownError,
    OSError,
)


@contextmanager
def redis_errors_as_unavailable() -> Iterator[None]:
    try:
        yield
    except UNAVAILABLE as exc:
        raise as_unavailable(exc) from exc


def as_unavailable(error: Exception) -> Exception:
    """A Redis error that means the server is away, as :class:`StoreUnavailable`; any other
    error as it is."""
    if not isinstance(error, UNAVAILABLE):
        return error
    unavailable = StoreUnavailable(f"redis unavailable: {type(error).__name__}")
    unavailable.__cause__ = error
    return unavailable
