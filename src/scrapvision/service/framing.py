"""How frames and their metadata arrive: request bodies, the batch format, WS messages.

Batch body (`Content-Type: application/x-scrapvision-batch`), written easily by a PLC or
any client with a 4-byte length and a byte copy; repeated once per frame:

    uint32 big-endian  length of the metadata JSON
    bytes              metadata JSON, UTF-8: {"frame_id": "...", "capture_time": 1.7e9,
                       "belt_position": 12.5, "item_id": "..."} (all optional)
    uint32 big-endian  length of the frame
    bytes              the frame: JPEG or PNG

In Python: `struct.pack(">I", len(meta)) + meta + struct.pack(">I", len(jpg)) + jpg`.
"""

from __future__ import annotations

import struct
import time
import uuid
from typing import Annotated

from fastapi import HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from scrapvision.service.lines import FrameMeta

BATCH_MEDIA_TYPE = "application/x-scrapvision-batch"
FRAME_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "application/octet-stream"})

Identifier = Annotated[str, StringConstraints(min_length=1, max_length=128,
                                              pattern=r"^[\x21-\x7e]+$")]
UnixTime = Annotated[float, Field(gt=0, allow_inf_nan=False,
                                  description="unix seconds when the camera took the frame")]
BeltPosition = Annotated[float, Field(allow_inf_nan=False,
                                      description="encoder count / belt position")]

_LENGTH = struct.Struct(">I")
# A capture time further ahead of the server clock than this is a camera clock that runs
# ahead: its frames would never be late and their fire times would be wrong.
MAX_CLOCK_AHEAD_S = 10.0


class FrameMetaIn(BaseModel):
    """Metadata of one frame as JSON (batch header, WebSocket text message)."""

    model_config = ConfigDict(extra="forbid")

    frame_id: Identifier | None = None
    capture_time: UnixTime | None = None
    belt_position: BeltPosition | None = None
    item_id: Identifier | None = None

    def to_meta(self) -> FrameMeta:
        return FrameMeta(self.frame_id or new_frame_id(), self.capture_time,
                         self.belt_position, self.item_id)


def new_frame_id() -> str:
    """Id for a frame the client did not name (so the audit record can still refer to it)."""
    return uuid.uuid4().hex


def parse_meta_json(data: bytes | str) -> FrameMeta:
    """Metadata JSON -> FrameMeta; HTTPException(422) that says which field is wrong."""
    try:
        meta = FrameMetaIn.model_validate_json(data).to_meta()
    except ValidationError as exc:
        raise HTTPException(422, detail=f"bad frame metadata: {_summary(exc)}") from None
    return _check_clock(meta)


def _check_clock(meta: FrameMeta) -> FrameMeta:
    if meta.capture_time is not None and meta.capture_time > time.time() + MAX_CLOCK_AHEAD_S:
        ahead = meta.capture_time - time.time()
        raise HTTPException(422, detail=f"bad frame metadata: capture_time is {ahead:.0f} s "
                                        "ahead of the server clock: synchronise the camera "
                                        "clock (NTP/PTP)")
    return meta


META_FIELDS = tuple(FrameMetaIn.model_fields)
META_HEADERS = {name: "X-" + "-".join(p.capitalize() for p in name.split("_"))
                for name in META_FIELDS}  # frame_id -> X-Frame-Id


def meta_from_request(request: Request) -> FrameMeta:
    """Metadata from `X-Frame-Id`-style headers, else the same names as query parameters.

    Parsed with the one `FrameMetaIn` model rather than as eight FastAPI parameters, which
    cost a third of a millisecond per frame; `META_PARAMETERS` documents them in OpenAPI.
    """
    headers = request.headers
    query = request.query_params if request.scope["query_string"] else {}
    values = {}
    for name, header in META_HEADERS.items():
        value = headers.get(header)
        if value is None:
            value = query.get(name)
        if value is not None:
            values[name] = value
    try:
        meta = FrameMetaIn.model_validate(values).to_meta()
    except ValidationError as exc:
        raise HTTPException(
            422, detail=f"bad frame metadata (headers X-..., or query): {_summary(exc)}") from None
    return _check_clock(meta)


def _meta_parameters() -> list[dict[str, object]]:
    properties = FrameMetaIn.model_json_schema()["properties"]
    return [{"name": name, "in": place, "required": False, "schema": properties[field]}
            for field in META_FIELDS
            for place, name in (("header", META_HEADERS[field]), ("query", field))]


META_PARAMETERS = _meta_parameters()


def split_batch(body: bytes, max_frames: int) -> list[tuple[FrameMeta | HTTPException, bytes]]:
    """Split a batch body into (metadata, frame) pairs; HTTPException(400/413) when the
    framing is broken. A frame's bad metadata is its own HTTPException(422) in place of its
    metadata, so that one frame is refused and the others are still decided."""
    view = memoryview(body)
    frames: list[tuple[FrameMeta | HTTPException, bytes]] = []
    pos = 0
    while pos < len(view):
        if len(frames) == max_frames:
            raise HTTPException(413, detail=f"batch holds more than {max_frames} frames")
        meta_bytes, pos = _chunk(view, pos, "metadata", len(frames))
        frame, pos = _chunk(view, pos, "frame", len(frames))
        try:
            meta: FrameMeta | HTTPException = parse_meta_json(meta_bytes)
        except HTTPException as exc:
            meta = exc
        frames.append((meta, frame))
    if not frames:
        raise HTTPException(400, detail="empty batch body")
    return frames


def _chunk(view: memoryview, pos: int, what: str, index: int) -> tuple[bytes, int]:
    if pos + 4 > len(view):
        raise HTTPException(400, detail=f"batch truncated: frame {index} lacks its {what} length")
    (length,) = _LENGTH.unpack_from(view, pos)
    start, end = pos + 4, pos + 4 + length
    if end > len(view):
        raise HTTPException(
            400, detail=f"batch truncated: frame {index} {what} says {length} bytes, "
            f"{len(view) - start} left")
    return bytes(view[start:end]), end


def check_media_type(request: Request, allowed: frozenset[str]) -> None:
    """415 for a declared content type we do not take (no header: the bytes decide)."""
    declared = request.headers.get("content-type")
    if declared is None:
        return
    media_type = declared.split(";", 1)[0].strip().lower()
    if media_type not in allowed:
        raise HTTPException(415, detail=f"Content-Type '{media_type}' not accepted; "
                            f"use one of {sorted(allowed)}")


def _summary(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
                     for e in exc.errors())
