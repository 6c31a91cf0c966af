"""Lines as configuration: several lines and models at once, bins, multi-frame fusion."""

from __future__ import annotations

from pathlib import Path

from tinymodel import build_tiny_model, colour_frame

from scrapvision.registry import ModelRegistry
from scrapvision.settings import FusionSettings, LineSettings
from tests.service.conftest import frame_headers


def test_several_lines_with_different_models(make_client, models_dir: Path,
                                              tmp_path: Path) -> None:
    registry = ModelRegistry(models_dir)
    registry.add("other", build_tiny_model(tmp_path / "other.onnx", name="other"))
    registry.promote("other", "v1")
    client = make_client(lines={
        "a": LineSettings(model="tiny", deadline_ms=60_000, bins={"red": "7", "green": None}),
        "b": LineSettings(model="other", deadline_ms=60_000, recirculate_bin="back"),
    })
    assert [line["name"] for line in client.get("/v1/lines").json()] == ["a", "b"]
    red_a = client.post("/v1/lines/a/frames", content=colour_frame("red"),
                        headers=frame_headers()).json()
    green_a = client.post("/v1/lines/a/frames", content=colour_frame("green"),
                          headers=frame_headers()).json()
    grey_b = client.post("/v1/lines/b/frames", content=colour_frame("grey"),
                         headers=frame_headers()).json()
    assert (red_a["model_name"], red_a["action"], red_a["bin"]) == ("tiny", "eject", "7")
    assert (green_a["action"], green_a["bin"]) == ("pass", None)
    assert (grey_b["model_name"], grey_b["action"], grey_b["bin"]) == (
        "other", "recirculate", "back")


def test_frames_of_one_item_are_fused(make_client) -> None:
    client = make_client(lines={"tiny": LineSettings(
        model="tiny", deadline_ms=60_000, fusion=FusionSettings(max_frames=3, window_s=60))})

    def post(colour: str, item: str) -> dict:
        return client.post("/v1/lines/tiny/frames", content=colour_frame(colour),
                           headers=frame_headers(**{"X-Item-Id": item})).json()

    assert post("red", "item-1")["action"] == "eject"
    fused = post("grey", "item-1")  # alone it is unsure; with the red view it is red
    assert (fused["class_name"], fused["action"]) == ("red", "eject")
    assert fused["confidence"] < 0.9
    assert post("grey", "item-2")["action"] == "recirculate"  # another item: not fused



def test_fusion_never_mixes_frames_judged_by_two_model_versions(make_client, models_dir: Path,
                                                                tmp_path: Path) -> None:
    client = make_client(lines={"tiny": LineSettings(
        model="tiny", deadline_ms=60_000, fusion=FusionSettings(max_frames=3, window_s=60))})
    red = client.post("/v1/lines/tiny/frames", content=colour_frame("red"),
                      headers=frame_headers(**{"X-Item-Id": "item-1"})).json()
    assert (red["model_version"], red["action"]) == ("v1", "eject")
    ModelRegistry(models_dir).add("tiny", build_tiny_model(tmp_path / "v2.onnx", version="v2"))
    assert client.post("/v1/models/tiny/load", json={"version": "v2"}).status_code == 200
    grey = client.post("/v1/lines/tiny/frames", content=colour_frame("grey"),
                       headers=frame_headers(**{"X-Item-Id": "item-1"}))
    assert grey.status_code == 200
    assert (grey.json()["model_version"], grey.json()["action"]) == ("v2", "recirculate")
