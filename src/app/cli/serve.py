"""``app run``: uvicorn with flowgate's server settings (replaces Litestar's plain ``run``).

Litestar's own ``run`` cannot set uvicorn's WebSocket options; this one sets the fastest
WebSocket implementation that passes the tests, the frame size limit (so an oversized frame is
closed with 1009 before it is read whole), heartbeats and the graceful-shutdown period.
"""

from __future__ import annotations

import click
import uvicorn

from app.api.logs import logging_config
from app.cli.common import fail, load_settings_or_fail

WS_IMPLEMENTATIONS = ("websockets-sansio", "websockets", "wsproto")


@click.command(name="run")
@click.option("--host", default="127.0.0.1", show_default=True, envvar="FLOWGATE_HOST")
@click.option(
    "--port",
    default=8000,
    show_default=True,
    type=click.IntRange(0, 65535),
    envvar="FLOWGATE_PORT",
)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--ws",
    "ws_impl",
    default="websockets-sansio",
    show_default=True,
    type=click.Choice(WS_IMPLEMENTATIONS),
    help="uvicorn's WebSocket implementation.",
)
@click.option(
    "--forwarded-allow-ips",
    default="127.0.0.1",
    show_default=True,
    envvar="FORWARDED_ALLOW_IPS",
    help="Proxies trusted to set X-Forwarded-* headers.",
)
def run_command(host: str, port: int, workers: int, ws_impl: str, forwarded_allow_ips: str) -> None:
    """Serve flowgate with uvicorn."""
    settings = load_settings_or_fail()
    if workers > 1 and not settings.redis_url:
        raise fail(
            f"--workers {workers} needs FLOWGATE_REDIS_URL: without Redis each worker keeps its "
            "own chats, so sockets of one chat on different workers would not share its turns; "
            "set FLOWGATE_REDIS_URL or run one worker"
        )
    uvicorn.run(
        "app.api.asgi:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        ws=ws_impl,
        ws_max_size=settings.max_message_size,
        ws_ping_interval=settings.ws_ping_interval,
        ws_ping_timeout=settings.ws_ping_timeout,
        proxy_headers=True,
        forwarded_allow_ips=forwarded_allow_ips,
        timeout_graceful_shutdown=int(settings.shutdown_grace),
        log_level=settings.log_level.lower(),
        log_config=logging_config(settings.log_level, settings.log_format),
    )
