"""Body size limits on every route, declared or chunked."""

from __future__ import annotations

from collections.abc import Iterator

from tinymodel import colour_frame


def chunks(total: int, size: int = 4096) -> Iterator[bytes]:
    """A chunked body without Content-Length (the limit must count what arrives)."""
    yield b"\xff\xd8\xff"
    for _ in range(total // size):
        yield b"\0" * size


def test_json_bodies_are_limited(make_client) -> None:
    client = make_client(max_json_bytes=2048)
    huge = b'{"version": "v1", "pad": "' + b"a" * 10_000 + b'"}'
    response = client.post("/v1/models/tiny/load", content=huge,
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert "2048" in response.json()["detail"]
    assert client.post("/v1/models/tiny/load", json={"version": "v1"}).status_code == 200


def test_chunked_frame_over_the_limit_is_refused(make_client) -> None:
    client = make_client(max_frame_bytes=16_384)
    response = client.post("/v1/lines/tiny/frames", content=chunks(64_000))
    assert response.status_code == 413
    assert "16384" in response.json()["detail"]
    fine = client.post("/v1/lines/tiny/frames", content=iter([colour_frame("red")]))
    assert fine.status_code == 200 and fine.json()["class_name"] == "red"


def test_batch_limit_is_frame_limit_times_batch_size(make_client) -> None:
    client = make_client(max_frame_bytes=2048, max_batch_frames=2)
    response = client.post("/v1/lines/tiny/batch", content=b"\0" * 5000,
                           headers={"Content-Type": "application/x-scrapvision-batch"})
    assert response.status_code == 413 and "4096" in response.json()["detail"]


def test_a_batch_body_is_held_to_max_batch_bytes(make_client) -> None:
    client = make_client(max_frame_bytes=2048, max_batch_frames=64, max_batch_bytes=3000)
    response = client.post("/v1/lines/tiny/batch", content=iter([b"\0" * 2000, b"\0" * 2000]),
                           headers={"Content-Type": "application/x-scrapvision-batch"})
    assert response.status_code == 413 and "3000" in response.json()["detail"]
