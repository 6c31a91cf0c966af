"""The whole QA loop: frames through the real service -> audited decisions -> reviews
through the API -> `scrapvision audit export-dataset` -> a model retrained on the export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from colour_data import write_colour_dataset
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from scrapvision.audit.settings import AuditSettings, FrameSampling
from scrapvision.cli import app as cli
from scrapvision.settings import CONFIG_ENV, LineSettings, Settings

@pytest.fixture
def frames(tmp_path: Path) -> dict[str, bytes]:
    """Noisy colour frames, named `<true class>-<n>`; some look like another class."""
    root = tmp_path / "camera"
    write_colour_dataset(root, per_split={"train": 8}, max_mix=0.6, size=(120, 160))
    return {f"{path.parent.name}-{path.stem}": path.read_bytes()
            for path in sorted(root.glob("*/*.jpg"))}


def test_frames_reviews_export_retrain(frames, models_dir, tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from scrapvision.service.app import create_app
    from scrapvision.training.config import load_config
    from scrapvision.training.trainer import train

    monkeypatch.delenv(CONFIG_ENV, raising=False)
    audit = AuditSettings(url=f"sqlite:///{tmp_path / 'audit.db'}", frames_dir=tmp_path / "frames",
                          frames=FrameSampling(random_rate=1.0, max_per_minute=1000))
    settings = Settings(models_dir=models_dir, audit=audit,
                        lines={"tiny": LineSettings(model="tiny", deadline_ms=60_000)})
    with TestClient(create_app(settings)) as client:
        for frame_id, frame in frames.items():
            response = client.post("/v1/lines/tiny/frames", content=frame,
                                   headers={"Content-Type": "image/jpeg", "X-Frame-Id": frame_id})
            assert response.status_code == 200, response.text
        assert client.app.state.audit.flush()
        items = client.get("/v1/audit/decisions", params={"limit": 100}).json()["items"]
        assert len(items) == len(frames) and all(item["frame_hash"] for item in items)
        truth = {item["id"]: item["frame_id"].split("-")[0] for item in items}
        relabelled = 0
        for item in items:
            body = {"reviewer": "qa", "verdict": "confirm"}
            if truth[item["id"]] != item["class_name"]:
                body = {"reviewer": "qa", "verdict": "relabel", "label": truth[item["id"]]}
                relabelled += 1
            response = client.post(f"/v1/audit/decisions/{item['id']}/review", json=body)
            assert response.status_code == 201, response.text
    assert relabelled > 0  # the tiny model made mistakes that QA corrected

    export = tmp_path / "export"
    result = CliRunner().invoke(cli, ["audit", "export-dataset", "--out", str(export),
                                      "--url", audit.url, "--frames-dir", str(audit.frames_dir)])
    assert result.exit_code == 0, result.output
    manifest = [json.loads(line) for line in (export / "manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == len(frames)
    assert sum(entry["label_source"] == "relabelled" for entry in manifest) == relabelled
    for entry in manifest:  # every exported image sits under its true class
        assert entry["label"] == truth[entry["decision_id"]]
        assert entry["file"].startswith(f"{entry['label']}/")

    torch.set_num_threads(1)
    config = load_config(None, [], base={
        "name": "qa-retrain", "threads": 1, "runs_dir": str(tmp_path / "runs"),
        "data": {"roots": [str(export)]},
        "model": {"input_size": 64, "pretrained": False},
        "optim": {"epochs": 1, "batch_size": 8, "max_steps_per_epoch": 2, "warmup_epochs": 0},
    })
    run = train(config, progress=False)
    summary = json.loads((run / "run.json").read_text())
    assert summary["classes"] == ["blue", "green", "red"]
    assert summary["counts"]["train"] + summary["counts"]["val"] + summary["counts"]["test"] \
        == len(frames)
    assert (run / "best.pt").is_file()
