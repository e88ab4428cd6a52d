"""What every flowgate command shares: settings, the container, and clean failures.

The container (and so SQLAlchemy, advanced-alchemy and the drivers) is imported only by the
commands that open it: ``app token issue`` and ``app chat`` never do.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import click
import msgspec

from app.domain.errors import DomainError, InvalidGraph
from app.infra.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from app.bootstrap import Container

P = ParamSpec("P")
T = TypeVar("T")


class CommandFailed(click.ClickException):
    """Printed to stderr as ``Error: ...``; exit status 1."""


def fail(message: str) -> CommandFailed:
    return CommandFailed(message)


def load_settings_or_fail() -> Settings:
    """The settings, or the one line that says which is wrong (exit status 1)."""
    try:
        return load_settings()
    except SettingsError as exc:
        raise fail(str(exc)) from None


@asynccontextmanager
async def container() -> AsyncIterator[Container]:
    settings = load_settings_or_fail()
    from app.bootstrap import build_container
    from app.infra.sql.config import make_plain_sqlalchemy_config

    try:
        built = await build_container(settings, make_plain_sqlalchemy_config(settings.database_url))
    except SettingsError as exc:  # what only an adapter can check (a PEM key that does not parse)
        raise fail(str(exc)) from None
    try:
        yield built
    finally:
        await built.aclose()


def run_async(func: Callable[P, Awaitable[T]]) -> Callable[P, T]:
    """Runs an async command, turning domain errors into a message and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return asyncio.run(func(*args, **kwargs))  # type: ignore[arg-type]
        except InvalidGraph as exc:
            raise fail("invalid graph:\n  " + "\n  ".join(exc.problems)) from None
        except DomainError as exc:
            raise fail(str(exc) or type(exc).__name__) from None

    return wrapper


def read_graph(path: Path) -> Any:
    try:
        return msgspec.json.decode(path.read_bytes())
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc.strerror}") from None
    except msgspec.DecodeError as exc:
        raise fail(f"{path} is not valid JSON: {exc}") from None
