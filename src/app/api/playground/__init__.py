"""``GET /playground``: a page to try a flow in a browser, served from this package's files.

Plain HTML, one script and one stylesheet (``static/``), no build step and no request to any
other host. Litestar's static-files router serves them; a small middleware on that router alone
adds the Content-Security-Policy, so the chat socket's frames are not wrapped by it.
"""

from __future__ import annotations

import re
from pathlib import Path

from litestar import Router
from litestar.datastructures import CacheControlHeader, Headers, MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.static_files import create_static_files_router
from litestar.types import ASGIApp, Message, Receive, Scope, Send

STATIC_DIR = Path(__file__).parent / "static"
PATH = "/playground"

# A Host header is reflected into the policy only when it is a plain host[:port]: anything else
# (a header injection attempt, say) leaves just 'self'.
_PLAIN_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def content_security_policy(host: str | None) -> str:
    """Only this origin: its script and stylesheet, and WebSockets to the same host."""
    connect = "'self'"
    if host and _PLAIN_HOST.fullmatch(host):
        connect += f" ws://{host} wss://{host}"
    return "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self'",
            f"connect-src {connect}",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )


def security_headers(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        policy = content_security_policy(Headers.from_scope(scope).get("host"))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableScopeHeaders.from_message(message)
                headers["Content-Security-Policy"] = policy
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Referrer-Policy"] = "no-referrer"
            await send(message)

        await app(scope, receive, send_with_headers)

    return middleware


def make_playground_router() -> Router:
    return create_static_files_router(
        path=PATH,
        directories=[STATIC_DIR],
        html_mode=True,  # GET /playground serves index.html
        name="playground",
        cache_control=CacheControlHeader(no_cache=True),
        middleware=[security_headers],
        include_in_schema=False,
    )


playground_router = make_playground_router()
