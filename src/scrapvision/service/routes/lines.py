"""Lines and their frames: `GET /v1/lines`, `POST /v1/lines/{line}/frames` and `/batch`."""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.routing import APIRoute

from scrapvision.decode import DecodeError
from scrapvision.records import DecisionRecord
from scrapvision.service import metrics
from scrapvision.service.auth import API_KEY_HEADER, API_KEY_SCHEME, grant, require_role
from scrapvision.service.deps import line_named
from scrapvision.service.framing import (
    BATCH_MEDIA_TYPE,
    FRAME_MEDIA_TYPES,
    META_PARAMETERS,
    check_media_type,
    meta_from_request,
    split_batch,
)
from scrapvision.service.lines import FrameMeta, Line


class DirectRoute(APIRoute):
    """A route whose endpoint takes the `Request` and returns the `Response` itself.

    FastAPI documents it (its OpenAPI comes from `openapi_extra`) and its errors go through
    the app's exception handlers, but it resolves no dependencies and validates nothing:
    for the frame routes that machinery was the largest Python cost per frame besides
    decode and inference (bench/RESULTS.md).
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return self.endpoint


router = APIRouter(prefix="/v1/lines", tags=["lines"])

RETRY_AFTER = {"Retry-After": "1"}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
# The frame routes resolve their key and line by plain calls (`frame_line`), so OpenAPI
# learns of both here rather than from dependencies.
_LINE_PARAMETER = {"name": "line", "in": "path", "required": True,
                   "schema": {"type": "string", "title": "Line"}}
_SECURITY = [{API_KEY_SCHEME: []}]
_FRAME_BODY = {"requestBody": {"required": True, "content": {
    "image/jpeg": _BINARY, "image/png": _BINARY, "application/octet-stream": _BINARY}},
    "parameters": [_LINE_PARAMETER, *META_PARAMETERS], "security": _SECURITY}
_BATCH_BODY = {"requestBody": {"required": True, "content": {BATCH_MEDIA_TYPE: _BINARY}},
               "parameters": [_LINE_PARAMETER], "security": _SECURITY}
_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "unknown line"},
    413: {"description": "body or image too large (pixel bomb)"},
    415: {"description": "not a JPEG/PNG, or a content type we do not take"},
    422: {"description": "bad frame metadata"},
    503: {"description": "line saturated or model not loaded; retry after Retry-After"},
}


def json_response(content: Any, status_code: int = 200,
                  headers: dict[str, str] | None = None) -> Response:
    """orjson, no response-model checks: the records are already JSON-ready."""
    return Response(orjson.dumps(content), status_code, headers=headers,
                    media_type="application/json")


def frame_line(request: Request) -> Line:
    """The frame routes' key check (role `frames`) and line lookup, as plain calls (see
    `DirectRoute`)."""
    grant(request, "frames", request.headers.get(API_KEY_HEADER))
    return line_named(request, request.path_params["line"])


@router.get("", dependencies=[Depends(require_role("qa"))])
async def list_lines(request: Request) -> list[dict[str, Any]]:
    """Configured lines: model and version, deadline, per-class threshold and bin."""
    return [line.describe() for line in request.app.state.lines.values()]


async def post_frame(request: Request) -> Response:
    """Decide one frame: the body is the JPEG/PNG bytes, metadata in headers or query.

    A frame whose fire time (capture time + line deadline) passed before inference could
    start comes back with `action: "late"` and is not processed. When the line's queue is
    full the answer is 503 with Retry-After and the refused frame's record.
    """
    received = time.time()
    line = frame_line(request)
    try:  # a try, not a context manager: free on the path every frame takes
        meta = meta_from_request(request)
        check_media_type(request, FRAME_MEDIA_TYPES)
        frame = await request.body()  # size already limited by BodyLimitMiddleware
        record = await line.decide(frame, meta, received)
    except (DecodeError, HTTPException) as exc:
        count_refusal(line.name, exc)
        raise
    if record.action == "overload":
        return json_response(record.to_dict(), 503, RETRY_AFTER)
    return json_response(record.to_dict())


async def post_batch(request: Request) -> Response:
    """Decide several frames sent in one body (format: `application/x-scrapvision-batch`,
    see the README): the answer lists, in order, one decision or `{frame_id, status,
    error}` per frame, so one bad frame does not fail the others."""
    received = time.time()
    line = frame_line(request)
    try:
        check_media_type(request, frozenset({BATCH_MEDIA_TYPE}))
        frames = split_batch(await request.body(), request.app.state.settings.max_batch_frames)
    except HTTPException as exc:
        count_refusal(line.name, exc)
        raise
    metrics.BATCH_FRAMES.labels(line.name).observe(len(frames))
    results = [await decide_or_error(line, frame, meta, received) if isinstance(meta, FrameMeta)
               else _refused_meta(line, meta) for meta, frame in frames]
    return json_response({"decisions": results})


def add_frame_routes(app_router: APIRouter) -> None:
    """Put the frame routes on the app's own router, as `DirectRoute`s.

    FastAPI keeps an included router as a branch of the app's router and matches a request
    against it twice (to pick the branch, then inside it); a route of the app's router is
    matched once: 9 us less per HTTP frame, of the stubbed server's 197 (bench/RESULTS.md).
    """
    common: dict[str, Any] = {"methods": ["POST"], "tags": ["lines"],
                              "route_class_override": DirectRoute}
    app_router.add_api_route(
        "/v1/lines/{line}/frames", post_frame, openapi_extra=_FRAME_BODY,
        responses={200: {"model": DecisionRecord, "description": "the decision (or 'late')"},
                   **_ERRORS}, **common)
    app_router.add_api_route(
        "/v1/lines/{line}/batch", post_batch, openapi_extra=_BATCH_BODY,
        responses={200: {"description": "one decision or error per frame, in order"},
                   **_ERRORS}, **common)


def count_rejected(line: str, status: int) -> None:
    metrics.REJECTED.labels(line, str(status)).inc()


def count_refusal(line: str, exc: DecodeError | HTTPException) -> None:
    """Every 4xx answered for a frame of `line`: metadata, media type, size, decoding."""
    status = exc.status if isinstance(exc, DecodeError) else exc.status_code
    if status < 500:
        count_rejected(line, status)


def _refused_meta(line: Line, exc: HTTPException) -> dict[str, Any]:
    count_rejected(line.name, exc.status_code)
    return {"frame_id": None, "status": exc.status_code, "error": exc.detail}


async def decide_or_error(line: Line, frame: bytes, meta: FrameMeta,
                          received: float) -> dict[str, Any]:
    """One frame of a batch or stream: its record, or an error entry in its place."""
    try:
        return (await line.decide(frame, meta, received)).to_dict()
    except DecodeError as exc:
        count_rejected(line.name, exc.status)
        return {"frame_id": meta.frame_id, "status": exc.status, "error": str(exc)}
