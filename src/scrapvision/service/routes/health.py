"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from scrapvision.service import metrics

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process answers (it may still be loading models: see /readyz)."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "some line has no model loaded, "
                                                     "or some worker is still starting"}})
async def readyz(request: Request, response: Response) -> dict[str, object]:
    """Ready only when every configured line has its model loaded and every worker process
    has started: a camera connecting earlier could be held by a worker still loading."""
    lines = request.app.state.lines
    waiting = sorted(name for name, line in lines.items() if not line.ready)
    expected = request.app.state.settings.workers if metrics.multiprocess_mode() else 1
    started = metrics.workers_started()
    ready = not waiting and bool(lines) and started >= expected
    if not ready:
        response.status_code = 503
    return {"ready": ready, "lines": sorted(lines), "not_ready": waiting,
            "workers": {"started": started, "expected": expected}}


@router.get("/metrics", response_class=Response)
async def prometheus_metrics() -> Response:
    """Prometheus exposition (summed over worker processes)."""
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
