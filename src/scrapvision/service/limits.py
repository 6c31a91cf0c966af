"""Request body size limits, enforced before any route buffers or parses a body.

FastAPI reads a JSON body whole before validating it, so a limit inside a route comes too
late. This ASGI middleware refuses an oversized declared `Content-Length` at once, and
counts the bytes of a chunked body as they arrive, with 413 either way. Frame routes get
the frame limit, batch routes `max_batch_bytes` (at most frame limit x batch size),
everything else `max_json_bytes`.
"""

from __future__ import annotations

from fastapi import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scrapvision.service import metrics
from scrapvision.settings import Settings


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.frame_limit = settings.max_frame_bytes
        self.batch_limit = min(settings.max_batch_bytes,
                               settings.max_frame_bytes * settings.max_batch_frames)
        self.other_limit = settings.max_json_bytes

    def limit_for(self, path: str) -> int:
        if path.endswith("/frames"):
            return self.frame_limit
        if path.endswith("/batch"):
            return self.batch_limit
        return self.other_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            _count_if_frame_of_a_line(scope)
            response = JSONResponse(
                {"detail": f"body of {declared} bytes exceeds the limit of {limit} bytes"}, 413)
            await response(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise HTTPException(413, detail=f"body exceeds the limit of {limit} bytes")
            return message

        await self.app(scope, counting_receive, send)


def _count_if_frame_of_a_line(scope: Scope) -> None:
    """A frame refused before any route saw it still counts for its line, if the line
    exists (a made-up name in the path must not add a metrics series)."""
    parts = scope["path"].split("/")  # "", "v1", "lines", LINE, "frames" | "batch"
    if len(parts) == 5 and parts[1:3] == ["v1", "lines"] and parts[4] in ("frames", "batch"):
        if parts[3] in getattr(scope["app"].state, "lines", {}):
            metrics.REJECTED.labels(parts[3], "413").inc()


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None
