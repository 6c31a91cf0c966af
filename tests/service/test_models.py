"""Models: list, load a new version with zero downtime, refuse bad files, roll back."""

from __future__ import annotations

import threading
from pathlib import Path

from fastapi.testclient import TestClient
from tinymodel import build_tiny_model, colour_frame

from scrapvision.registry import ModelRegistry
from tests.service.conftest import frame_headers


def add_version(models_dir: Path, tmp_path: Path, version: str, **kwargs) -> None:
    """Add `tiny/<version>` (not promoted) built with `build_tiny_model(**kwargs)`."""
    built = build_tiny_model(tmp_path / "build" / f"{version}.onnx", version=version, **kwargs)
    ModelRegistry(models_dir).add("tiny", built, version)


def served_version(client: TestClient) -> str:
    response = client.post("/v1/lines/tiny/frames", content=colour_frame("red"),
                           headers=frame_headers())
    assert response.status_code == 200, response.text
    return response.json()["model_version"]


def test_models_lists_loaded_model_with_card(client: TestClient, models_dir: Path) -> None:
    (models_dir / "tiny" / "v1" / "card.json").write_text('{"target_purity": 0.98}')
    [model] = client.get("/v1/models").json()
    assert (model["name"], model["version"], model["active"]) == ("tiny", "v1", "v1")
    assert model["lines"] == ["tiny"]
    assert model["info"]["class_names"] == ["blue", "green", "red"]
    assert model["card"] is None  # the card is read when a version loads
    assert model["error"] is None


def test_load_swaps_without_failing_requests_in_flight(client: TestClient, models_dir: Path,
                                                      tmp_path: Path) -> None:
    add_version(models_dir, tmp_path, "v2")
    versions: list[str] = []
    failures: list[int] = []
    stop = threading.Event()

    def stream_frames() -> None:
        while not stop.is_set():
            response = client.post("/v1/lines/tiny/frames", content=colour_frame("red"),
                                   headers=frame_headers())
            if response.status_code != 200 or response.json()["action"] != "eject":
                failures.append(response.status_code)
            versions.append(response.json()["model_version"])

    senders = [threading.Thread(target=stream_frames) for _ in range(3)]
    for sender in senders:
        sender.start()
    loaded = client.post("/v1/models/tiny/load", json={"version": "v2"})
    after = served_version(client)
    stop.set()
    for sender in senders:
        sender.join()
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["version"] == "v2"
    assert after == "v2"
    assert failures == []
    assert ModelRegistry(models_dir).active("tiny") == "v2"


def test_corrupt_or_misshapen_model_is_refused_and_old_keeps_serving(
        client: TestClient, models_dir: Path, tmp_path: Path) -> None:
    add_version(models_dir, tmp_path, "v2", input_size_meta=(64, 64))  # graph says 32x32
    corrupt = models_dir / "tiny" / "v3"
    corrupt.mkdir()
    (corrupt / "model.onnx").write_bytes(b"this is not onnx")
    for version, message in (("v2", "does not match"), ("v3", "cannot load")):
        response = client.post("/v1/models/tiny/load", json={"version": version})
        assert response.status_code == 422, response.text
        assert message in response.json()["detail"]
        assert served_version(client) == "v1"
    assert ModelRegistry(models_dir).active("tiny") == "v1"
    assert client.post("/v1/models/tiny/load", json={"version": "v9"}).status_code == 404
    assert client.post("/v1/models/nope/load", json={}).status_code == 404


def test_rollback_returns_to_the_previous_version(client: TestClient, models_dir: Path,
                                                 tmp_path: Path) -> None:
    assert client.post("/v1/models/tiny/rollback").status_code == 409
    add_version(models_dir, tmp_path, "v2")
    assert client.post("/v1/models/tiny/load", json={"version": "v2"}).status_code == 200
    response = client.post("/v1/models/tiny/rollback")
    assert response.status_code == 200, response.text
    assert response.json()["version"] == "v1"
    assert served_version(client) == "v1"
    assert ModelRegistry(models_dir).active("tiny") == "v1"


def test_promotion_by_another_process_is_picked_up(client: TestClient, models_dir: Path,
                                                  tmp_path: Path) -> None:
    """Another worker (or `scrapvision models promote`) changes active.json."""
    from tests.service.conftest import wait_until

    add_version(models_dir, tmp_path, "v2")
    ModelRegistry(models_dir).promote("tiny", "v2")
    wait_until(lambda: client.get("/v1/models").json()[0]["version"] == "v2")
    assert served_version(client) == "v2"


def test_a_model_copied_in_later_is_picked_up(make_client, models_dir: Path,
                                              tmp_path: Path) -> None:
    from scrapvision.settings import LineSettings
    from tests.service.conftest import wait_until

    client = make_client(lines={"later": LineSettings(model="later", deadline_ms=60_000)})
    assert client.get("/readyz").status_code == 503
    built = build_tiny_model(tmp_path / "build" / "later.onnx", name="later")
    registry = ModelRegistry(models_dir)
    registry.add("later", built)
    registry.promote("later", "v1")
    wait_until(lambda: client.get("/readyz").status_code == 200)


def test_a_broken_promotion_elsewhere_is_refused_and_v1_keeps_serving(client: TestClient, models_dir: Path,
                                                       tmp_path: Path) -> None:
    from tests.service.conftest import wait_until

    broken = models_dir / "tiny" / "v2"
    broken.mkdir()
    (broken / "model.onnx").write_bytes(b"not onnx")
    ModelRegistry(models_dir).promote("tiny", "v2")
    slot = client.app.state.models.slots["tiny"]
    wait_until(lambda: slot.refused_version == "v2")
    assert served_version(client) == "v1"
    assert "cannot load" in client.get("/v1/models").json()[0]["error"]


def test_a_damaged_card_is_refused_and_the_watcher_keeps_following(
        client: TestClient, models_dir: Path, tmp_path: Path) -> None:
    from tests.service.conftest import wait_until

    add_version(models_dir, tmp_path, "v2")
    add_version(models_dir, tmp_path, "v3")
    (models_dir / "tiny" / "v2" / "card.json").write_text("{broken")
    response = client.post("/v1/models/tiny/load", json={"version": "v2"})
    assert response.status_code == 422, response.text
    assert "card.json" in response.json()["detail"]
    registry = ModelRegistry(models_dir)
    registry.promote("tiny", "v2")  # by another process: the watcher refuses it
    slot = client.app.state.models.slots["tiny"]
    wait_until(lambda: slot.refused_version == "v2")
    registry.promote("tiny", "v3")  # and still follows the next promotion
    wait_until(lambda: slot.current.version == "v3")
    assert served_version(client) == "v3"


def test_a_damaged_active_file_is_reported_and_the_current_version_keeps_serving(
        client: TestClient, models_dir: Path) -> None:
    from tests.service.conftest import wait_until

    (models_dir / "tiny" / "active.json").write_text('{"active": "v1", "hist')
    slot = client.app.state.models.slots["tiny"]
    wait_until(lambda: slot.registry_error is not None)
    [model] = client.get("/v1/models").json()
    assert (model["version"], model["active"], model["history"]) == ("v1", None, None)
    assert "active.json is damaged" in model["registry_error"]
    for route in ("load", "rollback"):
        response = client.post(f"/v1/models/tiny/{route}")
        assert response.status_code == 422, response.text
        assert "active.json" in response.json()["detail"]
    assert served_version(client) == "v1"
    (models_dir / "tiny" / "active.json").unlink()  # repaired: the newest version is active
    wait_until(lambda: slot.registry_error is None)


def test_a_damaged_active_file_at_startup_leaves_only_its_lines_not_ready(
        make_client, models_dir: Path) -> None:
    (models_dir / "tiny" / "active.json").write_text("[]")
    client = make_client()
    assert client.get("/healthz").status_code == 200
    response = client.post("/v1/lines/tiny/frames", content=colour_frame("red"),
                           headers=frame_headers())
    assert response.status_code == 503
    assert "active.json is damaged" in response.json()["detail"]


def test_a_model_the_watcher_fails_on_never_holds_back_another(
        make_client, models_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from scrapvision.settings import LineSettings
    from tests.service.conftest import wait_until

    registry = ModelRegistry(models_dir)
    registry.add("other", build_tiny_model(tmp_path / "other.onnx", name="other"))
    client = make_client(lines={"a": LineSettings(model="tiny", deadline_ms=60_000),
                                "b": LineSettings(model="other", deadline_ms=60_000)})
    manager = client.app.state.models
    active = manager.registry.active

    def failing_for_tiny(name: str) -> str:
        if name == "tiny":
            raise RuntimeError("unexpected")
        return active(name)

    monkeypatch.setattr(manager.registry, "active", failing_for_tiny)
    registry.add("other", build_tiny_model(tmp_path / "other2.onnx", name="other", version="v2"))
    registry.promote("other", "v2")
    wait_until(lambda: manager.slots["other"].current.version == "v2")
    assert "unexpected" in manager.slots["tiny"].registry_error
