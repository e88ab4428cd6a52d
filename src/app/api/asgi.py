"""The ASGI application: ``create_app()`` for uvicorn (``--factory``) and the ``app`` CLI."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from advanced_alchemy.extensions.litestar import SQLAlchemyInitPlugin
from litestar import Litestar

from app.api import log_redaction
from app.api.chat_socket import chat_endpoint, feature_endpoint
from app.api.graceful_shutdown import GracefulShutdown
from app.api.health import health, ready
from app.bootstrap import build_container
from app.cli.plugin import FlowgateCLIPlugin
from app.infra.settings import Settings, load_settings_or_exit
from app.infra.sql.config import make_sqlalchemy_config


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or load_settings_or_exit()  # a bad setting: one line, exit 1
    log_redaction.install()
    _configure_logging(settings.log_level)
    # One SQL config for the repositories and for the plugin's `app database ...` commands.
    sql = make_sqlalchemy_config(settings.database_url)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        container = await build_container(settings, sql)
        app.state.container = container
        shutdown = GracefulShutdown(container.drain)
        shutdown.install()
        try:
            yield
        finally:
            shutdown.uninstall()
            await container.aclose()

    app = Litestar(
        route_handlers=[chat_endpoint, feature_endpoint, health, ready],
        lifespan=[lifespan],
        # advanced-alchemy's plugin for the engine's lifespan and `app database ...`.
        plugins=[SQLAlchemyInitPlugin(config=sql), FlowgateCLIPlugin()],
        openapi_config=None,
    )
    # The plugin also adds a before-send hook that closes request-scoped sessions. flowgate
    # opens none (each repository call is its own unit of work), and any such hook makes
    # Litestar wrap every ASGI message sent, each WebSocket frame included: in the benchmark,
    # most of Litestar's share of a round trip. flowgate registers no hook of its own.
    app.before_send.clear()
    return app


def _configure_logging(level: str) -> None:
    """flowgate's own loggers (``app.*``) write beside uvicorn's, in its format."""
    logger = logging.getLogger("app")
    logger.setLevel(level)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)-9s %(name)s: %(message)s"))
        handler.addFilter(log_redaction.RedactTokens())
        logger.addHandler(handler)
        logger.propagate = False
