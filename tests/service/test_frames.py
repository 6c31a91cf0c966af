"""POST /v1/lines/{line}/frames: decisions, deadlines, backpressure and bad input."""

from __future__ import annotations

import asyncio
import threading
import time

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from tinymodel import colour_frame

from scrapvision.decode import DecodeError
from scrapvision.service.lines import FrameMeta
from scrapvision.settings import LineSettings
from tests.service.conftest import RecordingAudit, frame_headers, wait_until


def test_red_frame_is_ejected_to_the_red_bin(client: TestClient, audit: RecordingAudit) -> None:
    captured = time.time()
    response = client.post("/v1/lines/tiny/frames", content=colour_frame("red"),
                           headers=frame_headers("f-1", captured, **{"X-Belt-Position": "12.5",
                                                                     "X-Item-Id": "item-7"}))
    assert response.status_code == 200, response.text
    decision = response.json()
    assert decision["frame_id"] == "f-1"
    assert decision["class_name"] == "red"
    assert decision["action"] == "eject"
    assert decision["bin"] == "red"
    assert decision["confidence"] > 0.99
    assert decision["model_name"] == "tiny" and decision["model_version"] == "v1"
    assert decision["fire_time"] == pytest.approx(captured + 60.0)
    assert decision["in_time"] is True
    assert decision["belt_position"] == 12.5 and decision["item_id"] == "item-7"
    assert [name for name, _ in decision["top_k"]][0] == "red"
    assert len(decision["top_k"]) == 3
    assert decision["latency_ms"] >= 0
    assert audit.records[-1].frame_id == "f-1" and audit.frames[-1] == colour_frame("red")


def test_metadata_may_come_as_query_parameters(client: TestClient) -> None:
    captured = time.time()
    response = client.post(
        "/v1/lines/tiny/frames",
        params={"frame_id": "q-1", "capture_time": captured, "item_id": "i-1"},
        content=colour_frame("green", fmt=".png"), headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    decision = response.json()
    assert (decision["frame_id"], decision["class_name"], decision["item_id"]) == (
        "q-1", "green", "i-1")
    assert decision["capture_time"] == pytest.approx(captured)


def test_frame_without_metadata_gets_an_id_and_arrival_time(client: TestClient) -> None:
    before = time.time()
    response = client.post("/v1/lines/tiny/frames", content=colour_frame("blue"))
    decision = response.json()
    assert response.status_code == 200 and decision["frame_id"]
    assert decision["capture_time"] is None
    assert decision["fire_time"] >= before + 60.0


def test_unsure_frame_is_recirculated(client: TestClient) -> None:
    response = client.post("/v1/lines/tiny/frames", content=colour_frame("grey"),
                           headers=frame_headers())
    decision = response.json()
    assert decision["action"] == "recirculate"
    assert decision["bin"] == "recirculate"
    assert decision["confidence"] < 0.5


def test_frame_past_its_fire_time_is_dropped_as_late(client: TestClient,
                                                     audit: RecordingAudit) -> None:
    response = client.post("/v1/lines/tiny/frames", content=colour_frame("red"),
                           headers=frame_headers("old", time.time() - 120))
    assert response.status_code == 200
    decision = response.json()
    assert decision["action"] == "late"
    assert decision["in_time"] is False
    assert decision["class_name"] is None and decision["top_k"] == []
    assert audit.actions() == ["late"]
    metrics = client.get("/metrics").text
    assert 'scrapvision_decisions_total{action="late",class_name="",line="tiny"}' in metrics


def post_in_background(client: TestClient, frame_id: str) -> tuple[threading.Thread, list]:
    answers: list = []
    sender = threading.Thread(target=lambda: answers.append(client.post(
        "/v1/lines/tiny/frames", content=colour_frame("red"), headers=frame_headers(frame_id))))
    sender.start()
    return sender, answers


def test_full_line_answers_503_with_retry_after(make_client, hold,
                                                audit: RecordingAudit) -> None:
    client = make_client(lines={"tiny": LineSettings(model="tiny", deadline_ms=60_000,
                                                     max_in_flight=1)})
    line = client.app.state.lines["tiny"]
    held = hold(line)
    sender, first = post_in_background(client, "a")
    wait_until(lambda: held.calls == [1])  # the first frame holds the only place
    refused = client.post("/v1/lines/tiny/frames", content=colour_frame("red"),
                          headers=frame_headers("b"))
    held.release()
    sender.join()
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "1"
    assert refused.json()["action"] == "overload" and refused.json()["frame_id"] == "b"
    assert first[0].status_code == 200 and first[0].json()["action"] == "eject"
    assert sorted(audit.actions()) == ["eject", "overload"]


def test_on_the_event_loop_frames_arriving_together_beyond_max_in_flight_get_overload(
        make_client, audit: RecordingAudit) -> None:
    client = make_client(inference="loop", lines={"tiny": LineSettings(
        model="tiny", deadline_ms=60_000, max_in_flight=2)})
    line = client.app.state.lines["tiny"]

    async def arrive_together() -> list[str]:
        records = await asyncio.gather(*(
            line.decide(colour_frame("red"), FrameMeta(f"f{i}"), time.time()) for i in range(3)))
        return [record.action for record in records]

    assert client.portal.call(arrive_together) == ["eject", "eject", "overload"]
    assert sorted(audit.actions()) == ["eject", "eject", "overload"]


def test_frames_with_a_bad_header_never_take_a_place_in_the_line(
        make_client, audit: RecordingAudit) -> None:
    client = make_client(inference="loop", lines={"tiny": LineSettings(
        model="tiny", deadline_ms=60_000, max_in_flight=1)})
    line = client.app.state.lines["tiny"]
    # cut before its frame header, so refused unread; a bomb; then a good frame
    frames = [colour_frame("red")[:20], _bomb_png(16_000, 16_000), colour_frame("red")]

    async def arrive_together() -> list[object]:
        return await asyncio.gather(*(line.decide(frame, FrameMeta(f"f{i}"), time.time())
                                      for i, frame in enumerate(frames)),
                                    return_exceptions=True)

    truncated, bomb, good = client.portal.call(arrive_together)
    assert isinstance(truncated, DecodeError) and truncated.status == 400
    assert isinstance(bomb, DecodeError) and bomb.status == 413
    assert good.action == "eject"  # the only place was still free
    assert line.in_flight == 0 and audit.actions() == ["eject"]


def test_frame_that_waits_past_its_fire_time_is_not_processed(make_client, hold,
                                                            audit: RecordingAudit) -> None:
    client = make_client(lines={"tiny": LineSettings(model="tiny", deadline_ms=500)})
    line = client.app.state.lines["tiny"]
    held = hold(line)
    first, _ = post_in_background(client, "busy")
    wait_until(lambda: held.calls == [1])
    second, answer = post_in_background(client, "waits")
    wait_until(lambda: line.slot.workers.waiting() == 1)
    time.sleep(0.6)  # the 500 ms deadline passes while the frame waits for the thread
    held.release()
    first.join()
    second.join()
    assert answer[0].json()["action"] == "late"
    assert held.calls == [1]  # the late frame never reached onnxruntime
    assert sorted(audit.actions()) == ["eject", "late"]


def test_waiting_frames_are_inferred_in_one_call_with_micro_batching(make_client, hold) -> None:
    client = make_client(max_batch=4)
    line = client.app.state.lines["tiny"]
    held = hold(line)
    senders = [post_in_background(client, "first")]
    wait_until(lambda: held.calls == [1])
    senders += [post_in_background(client, f"b{i}") for i in range(4)]
    wait_until(lambda: line.slot.workers.waiting() == 4)
    held.release()
    for sender, _ in senders:
        sender.join()
    assert held.calls == [1, 4]
    answers = [answer[0].json() for _, answer in senders]
    assert [a["class_name"] for a in answers] == ["red"] * 5
    assert "scrapvision_inference_batch_frames_bucket" in client.get("/metrics").text


def _bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims huge dimensions (the pixels are never there)."""
    data = bytearray(cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes())
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    return bytes(data)


@pytest.mark.parametrize(("body", "headers", "status", "message"), [
    (b"hello, not an image", {}, 415, "neither JPEG nor PNG"),
    (colour_frame("red")[:200], {}, 400, "truncated JPEG"),
    (b"", {}, 400, "empty"),
    (colour_frame("red"), {"Content-Type": "text/plain"}, 415, "Content-Type"),
    (b"\xff\xd8\xff" + b"\0" * 20_000, {}, 413, "exceeds"),
    (_bomb_png(16_000, 16_000), {}, 413, "exceeds the limit"),
    (colour_frame("red"), {"X-Capture-Time": "yesterday"}, 422, "capture_time"),
    (colour_frame("red"), {"X-Frame-Id": "has space"}, 422, "frame_id"),
    (colour_frame("red"), {"X-Capture-Time": "nan"}, 422, "capture_time"),
    (colour_frame("red"), {"X-Capture-Time": "1e15"}, 422, "ahead of the server clock"),
])
def test_bad_input_gets_a_clear_4xx(make_client, audit: RecordingAudit, body: bytes,
                                    headers: dict[str, str], status: int, message: str) -> None:
    client = make_client(max_frame_bytes=16_384)
    response = client.post("/v1/lines/tiny/frames", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert message.lower() in response.text.lower()
    assert audit.records == []
    assert client.post("/v1/lines/tiny/frames", content=colour_frame("red")).status_code == 200


def test_unknown_line_is_404(client: TestClient) -> None:
    response = client.post("/v1/lines/nope/frames", content=colour_frame("red"))
    assert response.status_code == 404
    assert "tiny" in response.json()["detail"]


def test_every_refused_frame_counts_for_its_line(client: TestClient) -> None:
    from scrapvision.service import metrics

    def rejected(status: int) -> float:
        return metrics.REJECTED.labels("tiny", str(status))._value.get()

    before = {status: rejected(status) for status in (400, 413, 415, 422)}
    frames = "/v1/lines/tiny/frames"
    client.post(frames, content=colour_frame("red"), headers={
        **frame_headers(), "X-Belt-Position": "abc"})  # 422
    client.post(frames, content=colour_frame("red"), headers={
        **frame_headers(), "Content-Type": "text/plain"})  # 415
    client.post(frames, content=b"\0" * (9 * 1024 * 1024), headers=frame_headers())  # 413
    client.post("/v1/lines/tiny/batch", content=b"",
                headers={"Content-Type": "application/x-scrapvision-batch"})  # 400
    with client.websocket_connect("/v1/lines/tiny/stream") as socket:
        socket.send_text('{"capture_time": -1}')
        assert socket.receive_json()["status"] == 422
    assert {status: rejected(status) - before[status] for status in before} == {
        400: 1, 413: 1, 415: 1, 422: 2}
    client.post("/v1/lines/nope/frames", content=b"\0" * (9 * 1024 * 1024),
                headers=frame_headers())  # unknown line: no series for it
    assert 'line="nope"' not in client.get("/metrics").text


def test_a_capture_time_ahead_of_the_server_clock_is_refused_on_the_stream(
        client: TestClient) -> None:
    with client.websocket_connect("/v1/lines/tiny/stream") as socket:
        socket.send_text(f'{{"capture_time": {time.time() + 3600}, "frame_id": "ahead"}}')
        socket.send_bytes(colour_frame("red"))
        answer = socket.receive_json()
    assert answer.get("status") == 422 and "ahead of the server clock" in answer["error"]
    slightly_ahead = client.post("/v1/lines/tiny/frames", content=colour_frame("red"),
                                 headers=frame_headers("f-ahead", time.time() + 2))
    assert slightly_ahead.status_code == 200  # within what NTP leaves
