"""The ASGI application: ``create_app()`` for uvicorn (``--factory``) and the ``app`` CLI."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from advanced_alchemy.extensions.litestar import SQLAlchemyInitPlugin
from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, YamlRenderPlugin

from app.api.asyncapi import VERSION as ASYNCAPI_VERSION
from app.api.asyncapi import asyncapi_json
from app.api.chat_socket import chat_endpoint
from app.api.graceful_shutdown import GracefulShutdown
from app.api.health import health, ready
from app.api.logs import configure_logging
from app.api.metrics import metrics
from app.api.playground import playground_router
from app.bootstrap import build_container
from app.cli.plugin import FlowgateCLIPlugin
from app.infra.settings import Settings, load_settings_or_exit
from app.infra.sql.config import make_sqlalchemy_config

#: Collections of the middle generation before a full one is considered (Python's default: 10).
FULL_COLLECTION_AFTER = 100


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or load_settings_or_exit()  # a bad setting: one line, exit 1
    # Also for ``uvicorn app.api.asgi:create_app --factory``, which formats its own lines
    # until here (``app run`` gives uvicorn the same configuration from the start).
    configure_logging(settings.log_level, settings.log_format)
    # One SQL config for the repositories and for the plugin's `app database ...` commands.
    sql = make_sqlalchemy_config(settings.database_url)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        container = await build_container(settings, sql, with_metrics=True)
        app.state.container = container
        await container.start()
        # What exists now (modules, the app, the container) lives as long as the process: out
        # of the collector's sight, a full collection walks only what sockets and turns made,
        # instead of pausing every socket of the process for the whole import graph.
        gc.freeze()
        # A full collection walks every socket's objects. Python runs one once ten collections
        # of the middle generation have passed and the objects that reached the oldest grew
        # by a quarter; past start-up the oldest generation is small, so a storm of connects
        # (2,000 sockets re-admitted) paid three full walks, 0.2-0.6 s of its CPU. After a
        # hundred instead, a storm pays none; a process of many sockets is held back by the
        # quarter rule as before. Sockets make no cycles (chat_socket.unwrap), so what waits
        # for a full collection is little.
        young, middle, _ = gc.get_threshold()
        gc.set_threshold(young, middle, FULL_COLLECTION_AFTER)
        shutdown = GracefulShutdown(container.drain)
        shutdown.install()
        try:
            yield
        finally:
            shutdown.uninstall()
            await container.aclose()

    app = Litestar(
        route_handlers=[
            chat_endpoint,
            health,
            ready,
            asyncapi_json,
            playground_router,
            metrics,
        ],
        lifespan=[lifespan],
        # advanced-alchemy's plugin for the engine's lifespan and `app database ...`.
        plugins=[SQLAlchemyInitPlugin(config=sql), FlowgateCLIPlugin()],
        # The HTTP routes' OpenAPI document at /schema/openapi.json (and `app schema openapi`),
        # rendered as JSON or YAML only: the HTML renderers load scripts from a CDN. The chat
        # protocol itself is the AsyncAPI document, /asyncapi.json.
        openapi_config=OpenAPIConfig(
            title="flowgate",
            version=ASYNCAPI_VERSION,
            path="/schema",
            render_plugins=[JsonRenderPlugin(), YamlRenderPlugin()],
        ),
        # No logging configuration of Litestar's own: it would give the root logger its
        # handler and format; its ``litestar`` logger goes through flowgate's instead.
        logging_config=None,
    )
    # The plugin also adds a before-send hook that closes request-scoped sessions. flowgate
    # opens none (each repository call is its own unit of work), and any such hook makes
    # Litestar wrap every ASGI message sent, each WebSocket frame included: in the benchmark,
    # most of Litestar's share of a round trip. flowgate registers no hook of its own.
    app.before_send.clear()
    return app
