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
    checks = await state.container.check_stores()
    ok = all(checks.values())
    return Response(
        {"status": "ok" if ok else "unavailable", "checks": checks},
        status_code=HTTP_200_OK if ok else HTTP_503_SERVICE_UNAVAILABLE,
    )
