"""Hostile batches and WebSocket streams (the parts of the API an OpenAPI schema cannot
describe): generated envelopes and message sequences, valid and broken.

Batch: the answer is a 4xx for a broken envelope, or one entry per frame in order, each a
decision or a 4xx error entry (a good frame only for its bad metadata). Stream: every frame and every bad metadata message gets one
answer, in order; the socket stays open and decides the next good frame correctly.
"""

from __future__ import annotations

import itertools
import json
import struct
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tinymodel import colour_frame

from scrapvision.service.framing import BATCH_MEDIA_TYPE

from .conftest import examples

CLIENT_ERRORS = range(400, 500)
GOOD_FRAMES = {colour: colour_frame(colour) for colour in ("red", "green", "blue")}

identifiers = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1,
                      max_size=20)
valid_metadata = st.fixed_dictionaries({}, optional={
    "frame_id": identifiers, "item_id": identifiers,
    "capture_time": st.floats(min_value=1e9, max_value=1.7e9),  # the past: never refused
    "belt_position": st.floats(allow_nan=False, allow_infinity=False),
}).map(json.dumps).map(str.encode)
metadata = valid_metadata | st.dictionaries(
    st.sampled_from(["frame_id", "capture_time", "belt_position", "item_id", "extra"]),
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=300)),
    max_size=4,
).map(json.dumps).map(str.encode) | st.binary(max_size=64)
frames = st.sampled_from(list(GOOD_FRAMES.values())) | st.binary(max_size=256)

FUZZ = settings(max_examples=examples(300, 5_000), deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def envelope(parts: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(struct.pack(">I", len(meta)) + meta + struct.pack(">I", len(frame)) + frame
                    for meta, frame in parts)


def is_error_entry(entry: dict) -> bool:
    return set(entry) == {"frame_id", "status", "error"} and entry["status"] in CLIENT_ERRORS


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(max_batch_frames=8)


@FUZZ
@given(parts=st.lists(st.tuples(valid_metadata, frames), max_size=10)
       | st.lists(st.tuples(metadata, frames), max_size=10),
       cut=st.none() | st.integers(min_value=0))
def test_any_batch_gets_a_4xx_or_one_answer_per_frame(client: TestClient, count_case,
                                                      parts: list[tuple[bytes, bytes]],
                                                      cut: int | None) -> None:
    body = envelope(parts)
    if cut is not None:  # a cut on a frame boundary leaves a shorter, valid batch
        body = body[: cut % (len(body) + 1)]
    ends = list(itertools.accumulate(len(envelope([part])) for part in parts))
    whole = [part for part, end in zip(parts, ends) if end <= len(body)]
    response = client.post("/v1/lines/tiny/batch", content=body,
                           headers={"Content-Type": BATCH_MEDIA_TYPE})
    count_case(f"{response.status_code}")
    if response.status_code != 200:
        assert response.status_code in CLIENT_ERRORS, response.text
        return
    decisions = response.json()["decisions"]
    assert len(body) in ends and len(decisions) == len(whole)
    for (_, frame), answer in zip(whole, decisions):
        if frame in GOOD_FRAMES.values() and not is_error_entry(answer):
            # decided, or 'late' for an old capture_time
            assert answer["action"] == "late" or answer["class_name"] == next(
                colour for colour, good in GOOD_FRAMES.items() if good == frame), answer
        elif frame in GOOD_FRAMES.values():  # a good frame is refused only for its metadata
            assert answer["status"] == 422 and answer["frame_id"] is None, answer
        else:  # refused; or dropped as 'late' before anyone looked past its magic bytes
            assert is_error_entry(answer) or answer.get("action") == "late", answer


messages = st.one_of(
    st.tuples(st.just("text"), metadata.map(lambda raw: raw.decode("utf-8", "replace"))),
    st.tuples(st.just("text"), st.text(max_size=2_000)),
    st.tuples(st.just("bytes"), frames),
)


@FUZZ
@given(sequence=st.lists(messages, max_size=12))
def test_any_message_sequence_is_answered_in_order_and_the_stream_survives(
        client: TestClient, count_case, sequence: list[tuple[str, bytes | str]]) -> None:
    count_case()
    with client.websocket_connect("/v1/lines/tiny/stream") as websocket:
        for kind, payload in sequence:
            if kind == "text":
                websocket.send_text(payload)
            else:
                websocket.send_bytes(payload)
        websocket.send_text(json.dumps({"frame_id": "last-good"}))
        websocket.send_bytes(GOOD_FRAMES["green"])
        frame_answers = 0
        while (answer := websocket.receive_json()).get("frame_id") != "last-good":
            assert "action" in answer or is_error_entry(answer), answer
            frame_answers += answer["frame_id"] is not None  # None: bad metadata message
        assert answer["class_name"] == "green"
    assert frame_answers == sum(kind == "bytes" for kind, _ in sequence)
