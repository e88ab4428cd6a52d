"""``GET /metrics``: the Prometheus text exposition of this process, or, with
``PROMETHEUS_MULTIPROC_DIR`` set (several workers), of every process writing there."""

from __future__ import annotations

from litestar import Request, Response, get


# In a worker thread: in multi-process mode it reads every process's files.
@get("/metrics", sync_to_thread=True, include_in_schema=False)
def metrics(request: Request) -> Response[bytes]:  # type: ignore[type-arg]
    # Imported here: the CLI, which loads this module with the app, never needs it.
    from app.infra.metrics import exposition

    body, content_type = exposition(request.app.state.container.metrics)
    return Response(body, media_type=content_type)
