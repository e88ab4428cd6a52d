"""advanced-alchemy's Litestar plugin, for what flowgate uses of it: the engine's lifespan and
the ``app database ...`` commands (migrations)."""

from __future__ import annotations

from advanced_alchemy.extensions.litestar import SQLAlchemyInitPlugin
from litestar.config.app import AppConfig


class SQLAlchemyLifespanPlugin(SQLAlchemyInitPlugin):
    """Without the plugin's before-send hook.

    That hook closes a request-scoped session after each response. flowgate opens none (every
    repository call is its own unit of work, WebSockets being long-lived), and any before-send
    hook makes Litestar wrap every ASGI message sent, each WebSocket frame included: in the
    benchmark, most of Litestar's share of a round trip.
    """

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        hooks = list(app_config.before_send)
        app_config = super().on_app_init(app_config)
        app_config.before_send = hooks
        return app_config
