"""Faults while frames stream: the audit database or the MQTT broker goes away, a bad
model is offered.

Database away (SQLite file locked by another connection; a private PostgreSQL stopped):
decisions keep flowing, records wait in a bounded buffer and are written when the
database returns; whatever did not fit is counted in `/v1/audit/stats`, never silent.

Bad model (corrupt file, wrong input shape, wrong class count): `POST /v1/models/{name}/load`
refuses it with 422 and says why, and the old version keeps serving; the same when another
worker promotes it in the registry behind the service's back.
"""

from __future__ import annotations

import json
import queue
import shutil
import socket
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text
from tinymodel import build_tiny_model, colour_frame

from scrapvision.registry import ModelRegistry
from scrapvision.settings import MqttSettings

from .conftest import WAIT_S, wait_for
from .postgres import PrivatePostgres
from .serving import free_port

BUFFER = 30  # audit max_buffered in these tests


def post_frames(client: TestClient, prefix: str, count: int) -> None:
    """Send `count` red frames; every one must get its decision while the store is away."""
    for number in range(count):
        response = client.post("/v1/lines/tiny/frames", content=colour_frame("red"),
                               headers={"Content-Type": "image/jpeg",
                                        "X-Frame-Id": f"{prefix}-{number}"})
        assert response.status_code == 200, response.text
        assert response.json()["class_name"] == "red"


def audit_stats(client: TestClient) -> dict[str, Any]:
    return client.get("/v1/audit/stats").json()


def stored_frame_ids(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return list(connection.scalars(text("SELECT frame_id FROM audit_decisions")))
    finally:
        engine.dispose()


def check_outage_is_bounded_and_counted(client: TestClient, url: str,
                                        make_unavailable: Callable[[], None],
                                        make_available: Callable[[], None]) -> None:
    """5 frames stored; outage: 40 frames decided, 30 buffered, 10 counted as dropped;
    back: the 30 written, in the database with the first 5."""
    post_frames(client, "before", 5)
    wait_for(lambda: audit_stats(client)["written"] == 5, "the first 5 records written")
    make_unavailable()
    post_frames(client, "during", BUFFER + 10)
    stats = audit_stats(client)
    assert stats["buffered"] == BUFFER and stats["dropped_full"] == 10
    wait_for(lambda: audit_stats(client)["write_errors"] > 0, "the writer to notice the outage")
    make_available()
    stats = wait_for(lambda: (s := audit_stats(client))["buffered"] == 0 and s,
                     "the buffer to drain once the database is back")
    assert stats["written"] == 5 + BUFFER and stats["dropped_full"] == 10
    assert stats["rejected"] == 0 and stats["lost_at_close"] == 0
    expected = {f"before-{n}" for n in range(5)} | {f"during-{n}" for n in range(BUFFER)}
    assert sorted(stored_frame_ids(url)) == sorted(expected)
    post_frames(client, "after", 3)
    wait_for(lambda: audit_stats(client)["written"] == 5 + BUFFER + 3, "writes to go on")


def test_sqlite_locked_by_another_connection(make_client, tmp_path: Path) -> None:
    client = make_client(audit={"max_buffered": BUFFER, "retry_max_s": 0.2})
    database = tmp_path / "audit.db"
    holder = sqlite3.connect(database, isolation_level=None, check_same_thread=False)

    def lock() -> None:
        holder.execute("BEGIN EXCLUSIVE")  # no other connection may write until commit

    def unlock() -> None:
        holder.execute("COMMIT")

    try:
        check_outage_is_bounded_and_counted(client, f"sqlite:///{database}", lock, unlock)
    finally:
        holder.close()
    with sqlite3.connect(database) as check:
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_postgresql_stopped_and_started_again(make_client,
                                              private_postgres: PrivatePostgres) -> None:
    client = make_client(audit={"url": private_postgres.url, "max_buffered": BUFFER,
                                "retry_max_s": 0.2})
    check_outage_is_bounded_and_counted(client, private_postgres.url,
                                        private_postgres.stop, private_postgres.start)


def not_published(client: TestClient) -> float:
    """scrapvision_mqtt_not_published_total for line 'tiny' (process-wide: compare deltas)."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "scrapvision_mqtt_not_published_total" and (
                    sample.labels.get("line") == "tiny"):
                return sample.value
    return 0.0


@pytest.mark.parametrize(("qos", "dropped"), [(0, 30), (1, 10)])
def test_mqtt_broker_away_costs_decisions_nothing_and_drops_are_counted(
        make_client, qos: int, dropped: int) -> None:
    """No broker listens on the port: every frame is still decided; QoS 1 messages wait in
    the client (`max_queued` of them) for the broker, and each message dropped is counted
    in /metrics (all of them at QoS 0, the 10 beyond the queue at QoS 1)."""
    client = make_client(mqtt=MqttSettings(port=free_port(), qos=qos, max_queued=20))
    before = not_published(client)
    post_frames(client, "no-broker", 30)
    assert not_published(client) - before == dropped


def test_mqtt_messages_queued_while_the_broker_was_away_arrive_when_it_comes(
        make_client) -> None:
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(mosquitto).is_file():
        pytest.skip("no mosquitto binary to run a private MQTT broker")
    port = free_port()
    settings = MqttSettings(port=port, qos=1, max_queued=20, topic="reliability/{line}")
    client = make_client(mqtt=settings)
    post_frames(client, "queued", 30)
    broker = subprocess.Popen([mosquitto, "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    received: queue.Queue[bytes] = queue.Queue()
    listener = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    listener.on_message = lambda _client, _data, message: received.put(message.payload)
    try:
        wait_for(lambda: _listening(port), "the private broker to listen")
        listener.connect("127.0.0.1", port)
        listener.subscribe("reliability/#", qos=1)
        listener.loop_start()
        # the service's client reconnects with backoff, then sends what it kept
        frame_ids = [json.loads(received.get(timeout=WAIT_S))["frame_id"] for _ in range(20)]
    finally:
        listener.loop_stop()
        broker.terminate()
        broker.wait()
    assert sorted(frame_ids) == sorted(f"queued-{n}" for n in range(20))


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def bad_versions(models_dir: Path, tmp_path: Path) -> dict[str, str]:
    """Unusable versions of 'tiny' in the registry: what is wrong with each."""
    registry = ModelRegistry(models_dir)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07not a model" * 100)
    truncated = tmp_path / "truncated.onnx"
    good = build_tiny_model(tmp_path / "good.onnx").read_bytes()
    truncated.write_bytes(good[: len(good) // 2])
    wrong_shape = build_tiny_model(tmp_path / "shape.onnx", size=(16, 16),
                                   input_size_meta=(32, 32))
    return {registry.add("tiny", corrupt): "cannot load",
            registry.add("tiny", truncated): "cannot load",
            registry.add("tiny", wrong_shape): "input shape"}


def served_version(client: TestClient) -> str:
    return client.get("/v1/models").json()[0]["version"]


def decided_by(client: TestClient) -> str:
    response = client.post("/v1/lines/tiny/frames", content=colour_frame("blue"),
                           headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 200 and response.json()["class_name"] == "blue"
    return response.json()["model_version"]


def test_bad_model_is_refused_at_load_and_the_old_one_keeps_serving(
        make_client, bad_versions: dict[str, str]) -> None:
    client = make_client()
    for version, reason in bad_versions.items():
        response = client.post("/v1/models/tiny/load", json={"version": version})
        assert response.status_code == 422
        assert "previous version keeps serving" in response.json()["detail"]
        assert reason in response.json()["detail"]
        assert served_version(client) == "v1" and decided_by(client) == "v1"
        assert client.get("/v1/models").json()[0]["active"] == "v1"  # not promoted


def test_bad_model_promoted_behind_the_services_back_is_refused_by_the_watcher(
        make_client, models_dir: Path, bad_versions: dict[str, str]) -> None:
    client = make_client()
    bad = next(iter(bad_versions))
    ModelRegistry(models_dir).promote("tiny", bad)  # e.g. `scrapvision models promote`
    model = wait_for(lambda: (m := client.get("/v1/models").json()[0])["error"] and m,
                     "the watcher to try the promoted version")
    assert model["version"] == "v1" and bad in model["error"]
    assert decided_by(client) == "v1"
    assert client.get("/readyz").status_code == 200
