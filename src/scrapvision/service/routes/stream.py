"""WebSocket stream: binary frames in, one JSON decision out per frame, in order.

Protocol on `/v1/lines/{line}/stream`:
- optional text message: the next frame's metadata as JSON
  (`{"frame_id": "...", "capture_time": 1.7e9, "belt_position": 1.0, "item_id": "..."}`);
- binary message: the frame (JPEG or PNG), decided with the metadata sent just before it
  (none sent: a generated frame id, capture time = arrival time);
- each frame is answered by a text message: its decision record, or
  `{"frame_id", "status", "error"}` for a bad frame or bad metadata. The socket stays open.

Frames are pipelined: up to the line's `max_in_flight` are decided concurrently while the
answers go out in arrival order; beyond that the server stops reading, so a fast camera is
slowed by TCP rather than queued without bound.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, WebSocket, WebSocketDisconnect

from scrapvision.service.auth import require_role
from scrapvision.service.deps import get_line
from scrapvision.service.framing import new_frame_id, parse_meta_json
from scrapvision.service.lines import FrameMeta, Line, LineUnavailable
from scrapvision.service.routes.lines import count_rejected, decide_or_error

log = logging.getLogger(__name__)
router = APIRouter(tags=["lines"])


@router.websocket("/v1/lines/{line}/stream", dependencies=[Depends(require_role("frames"))])
async def stream(websocket: WebSocket, line: Line = Depends(get_line)) -> None:
    await websocket.accept()
    limit = websocket.app.state.settings.max_frame_bytes
    answers: asyncio.Queue[asyncio.Future[dict[str, Any]] | None] = asyncio.Queue(
        maxsize=line.settings.max_in_flight)
    sender = asyncio.create_task(_send_in_order(websocket, answers))
    meta: FrameMeta | None = None
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            received = time.time()
            if message.get("text") is not None:
                try:
                    meta = parse_meta_json(message["text"])
                except HTTPException as exc:
                    count_rejected(line.name, exc.status_code)
                    await answers.put(_done({"frame_id": None, "status": exc.status_code,
                                             "error": exc.detail}))
                continue
            frame = message.get("bytes") or b""
            frame_meta, meta = meta or FrameMeta(new_frame_id()), None
            if len(frame) > limit:
                count_rejected(line.name, 413)
                answer = _done({"frame_id": frame_meta.frame_id, "status": 413,
                                "error": f"frame of {len(frame)} bytes exceeds {limit} bytes"})
            else:
                answer = asyncio.ensure_future(_decide(line, frame, frame_meta, received))
            await answers.put(answer)
    except WebSocketDisconnect:
        pass
    finally:
        await answers.put(None)
        await sender


async def _decide(line: Line, frame: bytes, meta: FrameMeta, received: float) -> dict[str, Any]:
    """Always an answer: a stream must not stall on one frame's failure."""
    try:
        return await decide_or_error(line, frame, meta, received)
    except LineUnavailable as exc:
        return {"frame_id": meta.frame_id, "status": 503, "error": str(exc)}
    except Exception:  # noqa: BLE001 - answered as a 500 entry, the stream goes on
        log.exception("frame failed", extra={"line": line.name, "frame_id": meta.frame_id})
        return {"frame_id": meta.frame_id, "status": 500, "error": "internal error"}


async def _send_in_order(websocket: WebSocket,
                         answers: asyncio.Queue[asyncio.Future[dict[str, Any]] | None]) -> None:
    """Send each answer when it is ready, in the order the frames came in.

    Once the client is gone the remaining answers are still awaited (their frames are
    decided and audited) but not sent, so the reader never blocks on a full queue.
    """
    connected = True
    while (answer := await answers.get()) is not None:
        result = await answer
        if connected:
            try:
                await websocket.send_text(orjson.dumps(result).decode())
            except (WebSocketDisconnect, RuntimeError):
                connected = False


def _done(result: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
    future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    future.set_result(result)
    return future
