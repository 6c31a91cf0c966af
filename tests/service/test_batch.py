"""POST /v1/lines/{line}/batch: several frames in one length-prefixed body."""

from __future__ import annotations

import json
import struct
import time

from fastapi.testclient import TestClient
from tinymodel import colour_frame

BATCH = {"Content-Type": "application/x-scrapvision-batch"}


def batch_body(*frames: tuple[dict, bytes]) -> bytes:
    """The documented batch format: (u32 len, metadata JSON, u32 len, frame) per frame."""
    out = b""
    for meta, frame in frames:
        encoded = json.dumps(meta).encode()
        out += struct.pack(">I", len(encoded)) + encoded + struct.pack(">I", len(frame)) + frame
    return out


def test_batch_answers_each_frame_in_order(client: TestClient) -> None:
    now = time.time()
    body = batch_body(({"frame_id": "a", "capture_time": now}, colour_frame("red")),
                      ({"frame_id": "b"}, b"not an image"),
                      ({"frame_id": "c", "item_id": "i"}, colour_frame("green", fmt=".png")))
    response = client.post("/v1/lines/tiny/batch", content=body, headers=BATCH)
    assert response.status_code == 200, response.text
    a, b, c = response.json()["decisions"]
    assert (a["frame_id"], a["class_name"], a["action"]) == ("a", "red", "eject")
    assert (b["frame_id"], b["status"]) == ("b", 415) and "JPEG" in b["error"]
    assert (c["frame_id"], c["class_name"], c["item_id"]) == ("c", "green", "i")
    assert "scrapvision_batch_frames_count" in client.get("/metrics").text


def test_malformed_batches_are_refused(make_client) -> None:
    client = make_client(max_batch_frames=2)
    frame = ({"frame_id": "x"}, colour_frame("red"))
    truncated = batch_body(frame)[:-10]
    cases = [
        (truncated, BATCH, 400, "truncated"),
        (b"", BATCH, 400, "empty batch"),
        (batch_body(frame, frame, frame), BATCH, 413, "more than 2 frames"),
        (batch_body(frame), {"Content-Type": "image/jpeg"}, 415, "Content-Type"),
    ]
    for body, headers, status, message in cases:
        response = client.post("/v1/lines/tiny/batch", content=body, headers=headers)
        assert response.status_code == status, (message, response.text)
        assert message in response.json()["detail"]


def test_a_frame_with_bad_metadata_is_refused_alone(client: TestClient) -> None:
    body = batch_body(({"frame_id": "a"}, colour_frame("red")),
                      ({"frame_id": "b", "capture_time": "soon"}, colour_frame("red")),
                      ({"camera": 3}, colour_frame("red")),
                      ({"frame_id": "d"}, colour_frame("green")))
    response = client.post("/v1/lines/tiny/batch", content=body, headers=BATCH)
    assert response.status_code == 200, response.text
    a, b, c, d = response.json()["decisions"]
    assert (a["frame_id"], a["class_name"]) == ("a", "red")
    assert (b["frame_id"], b["status"]) == (None, 422) and "capture_time" in b["error"]
    assert (c["frame_id"], c["status"]) == (None, 422) and "camera" in c["error"]
    assert (d["frame_id"], d["class_name"]) == ("d", "green")
