"""``python -m bench.echo_server --port P --ws IMPL``: the echo app under flowgate's uvicorn
settings.

The keyword arguments mirror ``app run`` (src/app/cli/serve.py) and read the same ``FLOWGATE_*``
settings, so that both servers differ only in the application.
"""

from __future__ import annotations

import argparse

import uvicorn

from app.api import http_limits
from app.api.logs import logging_config
from app.cli.serve import _WS_PROTOCOLS
from app.infra.settings import load_settings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ws", default="websockets-sansio")
    args = parser.parse_args()
    settings = load_settings()
    uvicorn.run(
        "bench.echo_app:app",
        host="127.0.0.1",
        port=args.port,
        workers=1,
        # The same HTTP parser and limits as ``app run`` (h11, bounded; the WebSocket protocol
        # that answers refused handshakes): they cost per connect and per socket.
        http="h11",
        h11_max_incomplete_event_size=http_limits.MAX_REQUEST_HEAD,
        ws=_WS_PROTOCOLS.get(args.ws, args.ws),
        ws_max_size=settings.max_message_size,
        ws_ping_interval=settings.ws_ping_interval,
        ws_ping_timeout=settings.ws_ping_timeout,
        proxy_headers=True,
        forwarded_allow_ips="127.0.0.1",
        timeout_graceful_shutdown=int(settings.shutdown_grace),
        log_level=settings.log_level.lower(),
        log_config=logging_config(settings.log_level, settings.log_format),
    )


if __name__ == "__main__":
    main()
