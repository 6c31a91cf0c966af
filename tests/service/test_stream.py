"""WebSocket /v1/lines/{line}/stream: binary frames in, decisions out in order."""

from __future__ import annotations

import json
import time

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect
from tinymodel import colour_frame


def test_stream_answers_every_frame_in_order(client: TestClient) -> None:
    colours = ["red", "green", "blue", "grey", "red", "blue", "green", "red", "blue", "green"]
    with client.websocket_connect("/v1/lines/tiny/stream") as ws:
        for i, colour in enumerate(colours):  # all sent before any answer is read
            ws.send_text(json.dumps({"frame_id": f"s{i}", "capture_time": time.time()}))
            ws.send_bytes(colour_frame(colour))
        answers = [ws.receive_json() for _ in colours]
    assert [a["frame_id"] for a in answers] == [f"s{i}" for i in range(len(colours))]
    expected = [c if c != "grey" else a["class_name"] for c, a in zip(colours, answers)]
    assert [a["class_name"] for a in answers] == expected
    assert answers[3]["action"] == "recirculate"


def test_stream_reports_bad_frames_and_keeps_going(client: TestClient) -> None:
    with client.websocket_connect("/v1/lines/tiny/stream") as ws:
        ws.send_text("{not json")
        bad_meta = ws.receive_json()
        ws.send_bytes(b"garbage")
        bad_frame = ws.receive_json()
        ws.send_text(json.dumps({"frame_id": "late", "capture_time": time.time() - 600}))
        ws.send_bytes(colour_frame("red"))
        late = ws.receive_json()
        ws.send_bytes(colour_frame("blue"))  # no metadata: generated id
        fine = ws.receive_json()
    assert bad_meta["status"] == 422 and "metadata" in bad_meta["error"]
    assert bad_frame["status"] == 415
    assert (late["frame_id"], late["action"]) == ("late", "late")
    assert fine["class_name"] == "blue" and fine["frame_id"]


def test_stream_to_unknown_line_is_refused(client: TestClient) -> None:
    with pytest.raises(WebSocketDisconnect) as refused:
        with client.websocket_connect("/v1/lines/nope/stream") as ws:
            ws.receive_json()
    assert refused.value.code == 1008


def test_stream_survives_a_failing_inference(client: TestClient, monkeypatch) -> None:
    line = client.app.state.lines["tiny"]
    engine = line.slot.current.engine

    def broken(batch):
        raise RuntimeError("onnxruntime fell over")

    with client.websocket_connect("/v1/lines/tiny/stream") as ws:
        monkeypatch.setattr(engine, "predict", broken)
        ws.send_bytes(colour_frame("red"))
        failed = ws.receive_json()
        monkeypatch.undo()
        ws.send_bytes(colour_frame("red"))
        recovered = ws.receive_json()
    assert failed["status"] == 500
    assert recovered["class_name"] == "red"
