"""Operations: /healthz, /readyz, /metrics, /v1/lines, OpenAPI."""

from __future__ import annotations

from fastapi.testclient import TestClient
from tinymodel import colour_frame

from scrapvision.service import metrics
from scrapvision.service.app import create_app
from scrapvision.settings import LineSettings
from tests.service.conftest import frame_headers, wait_until


def test_ready_when_every_line_has_its_model(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    workers = body.pop("workers")
    assert body == {"ready": True, "lines": ["tiny"], "not_ready": []}
    assert workers["expected"] == 1 and workers["started"] >= 1


def test_not_ready_while_another_worker_is_still_starting(make_client, monkeypatch) -> None:
    """With several worker processes, one that has loaded its models is not enough: a camera
    connecting now could be handed to a worker still loading, and held there."""
    client = make_client(workers=2)
    with monkeypatch.context() as patch:  # undone before the app's shutdown runs
        patch.setattr(metrics, "multiprocess_mode", lambda: True)
        patch.setattr(metrics, "workers_started", lambda: 1)
        waiting = client.get("/readyz")
        assert waiting.status_code == 503
        assert waiting.json()["workers"] == {"started": 1, "expected": 2}
        assert waiting.json()["not_ready"] == []  # its own lines are loaded
        patch.setattr(metrics, "workers_started", lambda: 2)
        assert client.get("/readyz").status_code == 200


def test_workers_started_counts_this_process_while_its_app_runs(make_settings, audit) -> None:
    before = metrics.workers_started()
    with TestClient(create_app(make_settings(), audit_store=audit)):
        assert metrics.workers_started() == before + 1
    assert metrics.workers_started() == before


def test_line_whose_model_does_not_fit_its_config_is_not_ready(make_client) -> None:
    """A model version serves only when it fits every line using it (here 'copper' names a
    class the model lacks), and a line whose model is missing is not ready either."""
    client = make_client(lines={
        "copper": LineSettings(model="tiny", bins={"copper": "3"}),
        "ghost": LineSettings(model="missing"),
    })
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["not_ready"] == ["copper", "ghost"]
    refused = client.post("/v1/lines/ghost/frames", content=colour_frame("red"))
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    assert "no model named 'missing'" in refused.json()["detail"]
    models = {m["name"]: m for m in client.get("/v1/models").json()}
    assert "copper" in models["tiny"]["error"]


def test_default_config_serves_one_line_per_registry_model(make_client) -> None:
    client = make_client(lines={})
    [line] = client.get("/v1/lines").json()
    assert (line["name"], line["model"], line["model_version"]) == ("tiny", "tiny", "v1")
    assert line["deadline_ms"] == 80.0
    assert line["classes"]["red"] == {"threshold": 0.5, "bin": "red"}


def test_metrics_count_decisions_and_expose_model_version(client: TestClient) -> None:
    def decisions() -> float:
        for row in client.get("/metrics").text.splitlines():
            if row.startswith('scrapvision_decisions_total{action="eject",class_name="red"'):
                return float(row.split()[-1])
        return 0.0

    before = decisions()
    client.post("/v1/lines/tiny/frames", content=colour_frame("red"), headers=frame_headers())
    text = client.get("/metrics").text
    assert decisions() == before + 1
    assert 'scrapvision_model_info{model="tiny",version="v1"} 1.0' in text
    assert 'scrapvision_frame_latency_seconds_bucket{le="0.08",line="tiny"}' in text
    assert 'scrapvision_queue_depth{line="tiny"} 0.0' in text


def test_metrics_count_what_the_audit_store_wrote(make_settings) -> None:
    def written(client: TestClient) -> float:
        for row in client.get("/metrics").text.splitlines():
            if row.startswith('scrapvision_audit_records_total{outcome="written"}'):
                return float(row.split()[-1])
        return 0.0

    with TestClient(create_app(make_settings())) as client:  # the real SQLite store
        before = written(client)  # counters are per process: other tests' stores add to them
        for number in range(3):
            client.post("/v1/lines/tiny/frames", content=colour_frame("red"),
                        headers=frame_headers(f"m{number}"))
        wait_until(lambda: written(client) == before + 3)
        text = client.get("/metrics").text
        assert client.get("/v1/audit/stats").json()["written"] == 3
    assert 'scrapvision_audit_records_total{outcome="dropped_full"}' in text  # 0 or more
    assert "scrapvision_audit_commits_total" in text
    assert "scrapvision_audit_buffered" in text


def test_openapi_documents_binary_frame_bodies(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    frames = schema["paths"]["/v1/lines/{line}/frames"]["post"]
    assert set(frames["requestBody"]["content"]) == {
        "image/jpeg", "image/png", "application/octet-stream"}
    assert {(p["name"], p["in"]) for p in frames["parameters"]} >= {
        ("line", "path"), ("X-Frame-Id", "header"), ("X-Capture-Time", "header"),
        ("capture_time", "query")}
    # the frame routes check key and line by plain calls, so OpenAPI hears of both by hand
    batch = schema["paths"]["/v1/lines/{line}/batch"]["post"]
    for operation in (frames, batch):
        assert operation["security"] == [{"APIKeyHeader": []}]
        assert ("line", "path") in {(p["name"], p["in"]) for p in operation["parameters"]}
    assert "APIKeyHeader" in schema["components"]["securitySchemes"]
    assert client.get("/docs").status_code == 200
