"""``GET /health`` (the process is alive) and ``GET /ready`` (its stores answer)."""

from __future__ import annotations

from litestar import Response, get
from litestar.datastructures import State
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE


@get("/health", sync_to_thread=False)
def health() -> dict[str, str]:
    return {"status": "ok"}


@get("/ready")
async def ready(state: State) -> Response[dict[str, object]]:
    """503 while a store does not answer, and while draining after SIGTERM (so that a load
    balancer stops sending new sockets here)."""
    container = state.container
    checks = await container.check_stores()
    ok = all(checks.values()) and not container.draining
    status = "ok" if ok else ("draining" if container.draining else "unavailable")
    return Response(
        {"status": status, "checks": checks},
        status_code=HTTP_200_OK if ok else HTTP_503_SERVICE_UNAVAILABLE,
    )
