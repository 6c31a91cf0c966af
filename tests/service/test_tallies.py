"""Tallies from the real audit store: per class / bin / action, rates, across restarts."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from fastapi.testclient import TestClient
from tinymodel import colour_frame

from scrapvision.service.app import create_app
from scrapvision.service.routes.tallies import shift_start
from tests.service.conftest import frame_headers, wait_until


def post_frames(client: TestClient, frames: list[tuple[str, float]]) -> None:
    for i, (colour, captured) in enumerate(frames):
        client.post("/v1/lines/tiny/frames", content=colour_frame(colour),
                    headers=frame_headers(f"{colour}-{i}", captured))


def tallies_once_written(client: TestClient, total: int) -> dict:
    """Tallies as soon as the group commit has written `total` decisions."""
    wait_until(lambda: client.get("/v1/lines/tiny/tallies").json()["since_start"]["total"]
               == total)
    return client.get("/v1/lines/tiny/tallies").json()


def test_tallies_count_and_survive_restart(make_settings) -> None:
    settings = make_settings()  # real SQLite store in tmp_path
    now = time.time()
    with TestClient(create_app(settings)) as client:
        post_frames(client, [("red", now), ("red", now), ("green", now), ("grey", now),
                             ("blue", now - 600)])
        minute = tallies_once_written(client, 5)["last_minute"]
    assert minute["total"] == 5
    assert minute["per_class"]["green"] == 1
    assert sum(minute["per_class"].values()) == 4  # the late frame has no class
    assert minute["per_bin"]["red"] == 2 and minute["per_bin"]["recirculate"] == 1
    assert {k: n for k, n in minute["per_action"].items() if n} == {
        "eject": 3, "recirculate": 1, "late": 1}
    assert minute["late"] == 1 and minute["dropped"] == 1
    assert minute["frames_per_s"] > 0 and minute["items_per_min"] > 0

    with TestClient(create_app(settings)) as client:  # the restarted service
        assert client.get("/v1/lines/tiny/tallies").json()["since_start"]["total"] == 5
        post_frames(client, [("blue", time.time())])
        after = tallies_once_written(client, 6)
    assert after["shift"]["total"] == 6
    assert after["since_start"]["per_class"]["blue"] == 1


def test_unknown_line_has_no_tallies(client: TestClient) -> None:
    assert client.get("/v1/lines/nope/tallies").status_code == 404


def test_shift_start_is_the_latest_start_before_now() -> None:
    starts = ["06:00", "14:00", "22:00"]
    at = datetime(2026, 3, 2, 15, 30, tzinfo=UTC)
    assert shift_start(at, starts, "UTC") == datetime(2026, 3, 2, 14, 0, tzinfo=UTC)
    night = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)
    assert shift_start(night, starts, "UTC") == datetime(2026, 3, 1, 22, 0, tzinfo=UTC)
    assert shift_start(at, starts, "Europe/Berlin") == datetime(2026, 3, 2, 13, 0, tzinfo=UTC)
