"""Audit HTTP API: query filters, keyset pages, CSV/JSONL export, reviews, frames, charts."""

from __future__ import annotations

import csv
import io
import json
import os
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from tinymodel import colour_frame

from scrapvision.audit.reviews import wilson_interval
from scrapvision.service.auth import hash_key
from scrapvision.settings import ApiKey

from .conftest import build_app

T0 = datetime(2026, 11, 22, 6, 0, tzinfo=UTC).timestamp()  # a shift start (06:00 UTC)


@pytest.fixture
def seeded(store, make_decision) -> dict[str, int]:
    """Nine decisions on two lines; returns frame_id -> decision id."""
    specs = [
        dict(frame_id="r1", class_name="red", bin="bin-red", confidence=0.95),
        dict(frame_id="r2", class_name="red", bin="bin-red", confidence=0.60, margin=0.1),
        dict(frame_id="r3", class_name="red", bin="bin-red", confidence=0.97),
        dict(frame_id="b1", class_name="blue", bin="bin-blue", confidence=0.90),
        dict(frame_id="g1", class_name="green", action="recirculate", bin="recirc",
             confidence=0.40, margin=0.05),
        dict(frame_id="l1", action="late", class_name=None, bin=None, confidence=None,
             margin=None, top_k=[]),
        dict(frame_id="v2", class_name="red", bin="bin-red", confidence=0.99, model_version="v2"),
        dict(frame_id="x1", line="line2", class_name="blue", bin="bin-blue", confidence=0.8),
        dict(frame_id="x2", line="line2", class_name="blue", bin="bin-blue", confidence=0.7),
    ]
    for minute, spec in enumerate(specs):  # one minute apart: no frame-sampling caps hit
        colour = spec.get("class_name") or "grey"
        store.submit(make_decision(time=T0 + 60 * minute, **spec), colour_frame(colour))
    assert store.flush()
    page = store_page(store)
    return {item["frame_id"]: item["id"] for item in page}


def store_page(store) -> list[dict]:
    from scrapvision.audit import queries

    return queries.page(store.engine, queries.DecisionFilter(), limit=100)["items"]


def frame_ids(client: TestClient, **params) -> list[str]:
    response = client.get("/v1/audit/decisions", params={"limit": 100, **params})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["total"] == len(body["items"])
    return [item["frame_id"] for item in body["items"]]


def review(client, decision_id, verdict, label=None, reviewer="anna"):
    body = {"reviewer": reviewer, "verdict": verdict}
    if label is not None:
        body["label"] = label
    return client.post(f"/v1/audit/decisions/{decision_id}/review", json=body)


def test_list_is_newest_first_with_every_field(client, seeded):
    response = client.get("/v1/audit/decisions")
    body = response.json()
    assert body["total"] == 9 and body["next_cursor"] is None
    assert [item["frame_id"] for item in body["items"]][:2] == ["x2", "x1"]
    first = body["items"][-1]
    assert first["class_name"] == "red" and first["top_k"] == [["red", 0.95], ["green", 0.05]]
    assert first["frame_hash"] and first["frame_reason"] == "class_sample"
    assert first["review"] is None


@pytest.mark.parametrize("params, expected", [
    ({"line": "line2"}, ["x2", "x1"]),
    ({"class_name": "red"}, ["v2", "r3", "r2", "r1"]),
    ({"action": "recirculate"}, ["g1"]),
    ({"bin": "bin-blue", "line": "line1"}, ["b1"]),
    ({"min_confidence": 0.9, "max_confidence": 0.96}, ["b1", "r1"]),
    ({"model_version": "v2"}, ["v2"]),
    ({"since": datetime.fromtimestamp(T0 + 120, UTC).isoformat(),
      "until": datetime.fromtimestamp(T0 + 240, UTC).isoformat()}, ["b1", "r3"]),
    ({"since": T0 + 420}, ["x2", "x1"]),
    ({"since": "2026-11-22T06:07:00"}, ["x2", "x1"]),  # naive: UTC
    ({"has_frame": False}, ["l1"]),
    ({"frame_reason": "low_margin"}, ["g1", "r2"]),
])
def test_filters(client, seeded, params, expected):
    assert frame_ids(client, **params) == expected


def test_reviewed_filter_and_label_filter(client, seeded):
    assert review(client, seeded["r2"], "relabel", "blue").status_code == 201
    assert review(client, seeded["b1"], "confirm").status_code == 201
    assert frame_ids(client, reviewed=True) == ["b1", "r2"]
    assert len(frame_ids(client, reviewed=False)) == 7
    assert frame_ids(client, label="blue") == ["b1", "r2"]


def test_keyset_pages_cover_everything_once(client, seeded):
    seen, cursor = [], None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        body = client.get("/v1/audit/decisions", params=params).json()
        assert body["total"] == 9 and len(body["items"]) <= 2
        seen += [item["id"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 9 and seen == sorted(seen, reverse=True)


@pytest.mark.parametrize("params", [
    {"min_confidence": 0.9, "max_confidence": 0.5}, {"action": "explode"},
    {"limit": 0}, {"limit": 10_000}, {"since": "yesterday"}, {"format": "xml"},
    {"since": T0 + 60, "until": T0},
    {"line": "a\x00b"}, {"class_name": "x" * 200}, {"since": "0001-01-01T00:00:00+05:00"},
    {"cursor": 2**70},
])
def test_bad_filters_are_422(client, seeded, params):
    assert client.get("/v1/audit/decisions", params=params).status_code == 422


def test_csv_export_streams_every_matching_row(client, seeded):
    review(client, seeded["r1"], "confirm")
    response = client.get("/v1/audit/decisions", params={"format": "csv", "line": "line1"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == 7
    by_frame = {row["frame_id"]: row for row in rows}
    assert json.loads(by_frame["r1"]["top_k"]) == [["red", 0.95], ["green", 0.05]]
    assert by_frame["r1"]["review_verdict"] == "confirm" and by_frame["r1"]["reviewer"] == "anna"
    assert by_frame["l1"]["class_name"] == "" and by_frame["l1"]["review_verdict"] == ""


def test_jsonl_export(client, seeded):
    response = client.get("/v1/audit/decisions", params={"format": "jsonl", "class_name": "red"})
    assert response.headers["content-type"].startswith("application/x-ndjson")
    items = [json.loads(line) for line in response.text.splitlines()]
    assert [item["frame_id"] for item in items] == ["v2", "r3", "r2", "r1"]


def test_review_never_overwrites_the_decision(client, seeded):
    decision_id = seeded["r2"]
    before = client.get(f"/v1/audit/decisions/{decision_id}").json()
    first = review(client, decision_id, "relabel", "blue", reviewer="anna")
    assert first.status_code == 201 and first.json()["label"] == "blue"
    assert review(client, decision_id, "confirm", reviewer="ben").status_code == 201
    after = client.get(f"/v1/audit/decisions/{decision_id}").json()
    for field in ("class_name", "confidence", "action", "bin", "top_k", "time", "frame_hash"):
        assert after[field] == before[field]
    assert after["review"]["verdict"] == "confirm" and after["review"]["label"] == "red"
    assert [(r["reviewer"], r["verdict"], r["label"]) for r in after["reviews"]] == [
        ("anna", "relabel", "blue"), ("ben", "confirm", "red")]


@pytest.mark.parametrize("frame_id, verdict, label, status", [
    ("r1", "relabel", "red", 422),  # same as decided: that is a confirm
    ("r1", "confirm", "blue", 422),  # a confirm cannot change the class
    ("r1", "relabel", None, 422),
    ("r1", "relabel", "../../etc", 422),
    ("r1", "relabel", ".hidden", 422),
    ("r1", "approve", None, 422),
    ("r1", "relabel", "bl\x00ue", 422),
    ("l1", "confirm", None, 422),  # late: no class to confirm
    ("l1", "relabel", "green", 201),
])
def test_review_validation(client, seeded, frame_id, verdict, label, status):
    response = review(client, seeded[frame_id], verdict, label)
    assert response.status_code == status, response.text


def test_review_of_unknown_decision_is_404(client, seeded):
    assert review(client, 999_999, "confirm").status_code == 404
    assert client.get("/v1/audit/decisions/999999").status_code == 404
    assert client.post(f"/v1/audit/decisions/{seeded['r1']}/review",
                       json={"verdict": "confirm"}).status_code == 422  # reviewer missing
    assert review(client, seeded["r1"], "confirm", reviewer="an\x00na").status_code == 422
    assert client.get("/v1/audit/throughput", params={"line": "\x00"}).status_code == 422


def test_frames_are_served_by_hash_only(client, seeded, store):
    frame_hash = client.get(f"/v1/audit/decisions/{seeded['r1']}").json()["frame_hash"]
    response = client.get(f"/v1/audit/frames/{frame_hash}")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert response.content == store.frame_store.path(frame_hash).read_bytes()
    assert client.get(f"/v1/audit/frames/{'0' * 64}").status_code == 404
    for bad in ["..%2F..%2Fetc%2Fpasswd", "%2e%2e", frame_hash.upper(), frame_hash[:-1] + "g",
                frame_hash + ".jpg"]:
        assert client.get(f"/v1/audit/frames/{bad}").status_code in (404, 422), bad


def test_wilson_interval_known_values():
    low, high = wilson_interval(8, 10)
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(50, 50)
    assert high == pytest.approx(1.0) and 0.92 < low < 0.93


def test_purity_and_accuracy_per_line_shift_bin(client, seeded):
    review(client, seeded["r1"], "confirm")
    review(client, seeded["r2"], "relabel", "blue")  # a blue item in the red bin
    review(client, seeded["r3"], "confirm")
    review(client, seeded["b1"], "confirm")
    review(client, seeded["g1"], "relabel", "red")  # recirculated: counts for accuracy only
    body = client.get("/v1/audit/purity", params={"line": "line1"}).json()
    shift = datetime.fromtimestamp(T0, UTC).isoformat()
    bins = {row["bin"]: row for row in body["bins"]}
    assert set(bins) == {"bin-red", "bin-blue"}
    red = bins["bin-red"]
    assert (red["line"], red["shift"], red["n"], red["correct"]) == ("line1", shift, 3, 2)
    assert red["share"] == pytest.approx(2 / 3)
    assert (red["ci_low"], red["ci_high"]) == pytest.approx(wilson_interval(2, 3))
    assert bins["bin-blue"]["share"] == 1.0
    (accuracy,) = body["accuracy"]
    assert (accuracy["n"], accuracy["correct"]) == (5, 3)
    assert client.get("/v1/audit/purity", params={"line": "line2"}).json()["bins"] == []
    low_margin_only = client.get("/v1/audit/purity", params={"frame_reason": "low_margin"})
    assert [(row["bin"], row["n"]) for row in low_margin_only.json()["bins"]] == [("bin-red", 1)]
    assert client.get("/v1/audit/purity", params={"frame_reason": "any"}).status_code == 422
    assert client.get("/v1/audit/purity", params={"since": T0, "until": T0}).status_code == 422


def test_purity_groups_by_configured_shift(client, seeded, store):
    store.settings = store.settings.model_copy(update={"shift_starts": ["06:03", "18:00"]})
    review(client, seeded["r1"], "confirm")  # 06:00 -> previous day's 18:00 shift
    review(client, seeded["b1"], "confirm")  # 06:03 -> the 06:03 shift
    shifts = [row["shift"] for row in client.get("/v1/audit/purity").json()["accuracy"]]
    assert shifts == ["2026-11-21T18:00:00+00:00", "2026-11-22T06:03:00+00:00"]


def test_throughput_buckets(client, seeded):
    response = client.get("/v1/audit/throughput", params={
        "line": "line1", "since": T0, "until": T0 + 3600, "bucket_s": 180})
    points = response.json()["points"]
    assert [point["time"] - T0 for point in points] == [0, 180, 360]
    assert [point["total"] for point in points] == [3, 3, 1]
    assert points[1] == {"time": T0 + 180, "total": 3, "eject": 1, "recirculate": 1, "late": 1}
    assert client.get("/v1/audit/throughput", params={
        "line": "line1", "bucket_s": 90}).status_code == 422


def test_facets_list_filter_choices(client, seeded):
    review(client, seeded["r2"], "relabel", "purple")
    facets = client.get("/v1/audit/facets").json()
    assert facets["lines"] == ["line1", "line2"]
    assert facets["classes"] == ["blue", "green", "red"]
    assert facets["classes_by_line"]["line2"] == ["blue"]
    assert facets["model_versions"] == ["v1", "v2"]
    assert "purple" in facets["labels"] and "recirc" in facets["bins"]


def test_stats_route_reports_what_the_one_store_did(client, seeded, store):
    stats = client.get("/v1/audit/stats").json()
    own = store.stats()
    assert (stats["written"], stats["buffered"], stats["dropped_full"]) == (9, 0, 0)
    assert stats["commits"] >= 1 and stats["last_commit_time"] is not None
    assert stats["frames"]["kept"] > 0
    assert {key: stats[key] for key in own} == own  # every key of stats(), same values
    # one process (no Prometheus multiprocess mode): its store is every worker there is
    assert (stats["scope"], stats["workers"]) == ("all workers", 1)
    assert stats["this_worker"] == {"pid": os.getpid(), **own}


def test_qa_page_and_its_static_files(client):
    page = client.get("/qa")
    assert page.status_code == 200 and "scrapvision QA" in page.text
    assert "/qa/static/qa.js" in page.text
    assert client.get("/qa/static/qa.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/qa/static/qa.css").status_code == 200
    for bad in ["qa.html", "..%2Fstore.py", "missing.js"]:
        assert client.get(f"/qa/static/{bad}").status_code == 404


def test_routes_require_a_qa_key_when_keys_are_configured(store, seeded):
    keys = [ApiKey(name="qa", role="qa", sha256=hash_key("qa-secret")),
            ApiKey(name="line", role="frames", sha256=hash_key("line-secret"))]
    with TestClient(build_app(store, keys)) as client:
        assert client.get("/v1/audit/decisions").status_code == 401
        assert client.get("/v1/audit/decisions",
                          headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.get("/v1/audit/decisions",
                          headers={"X-API-Key": "line-secret"}).status_code == 403
        assert client.get("/v1/audit/decisions",
                          headers={"X-API-Key": "qa-secret"}).status_code == 200
        assert review(client, seeded["r1"], "confirm").status_code == 401
        assert client.get("/qa").status_code == 200  # the page itself holds no data
