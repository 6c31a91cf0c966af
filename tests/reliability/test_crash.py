"""kill -9 of a whole multi-worker `scrapvision serve` (master and workers, as a power cut
or the OOM killer would) while two cameras stream: after a restart the store (SQLite, or a
private PostgreSQL) opens cleanly and every decision acknowledged more than the documented
200 ms before the kill is there.

tests/audit/test_serve_crash.py covers one worker with a 2 s margin; this one is the
default deployment (2 worker processes writing one SQLite file) held to the documented
window, and it prints the observed loss window for the README.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy import create_engine, text
from tinymodel import colour_frame

from .serving import free_port, kill_group, start_serve

COMMIT_INTERVAL_MS = 100
DURABILITY_WINDOW_S = 0.2  # AuditSettings caps commit_interval_ms at 200: the documented bound
STREAM_BEFORE_KILL_S = 3.0


class Camera(threading.Thread):
    """Posts frames back to back; records when each decision was acknowledged."""

    def __init__(self, base: str, name: str) -> None:
        super().__init__(daemon=True)
        self.base, self.name = base, name
        self.acknowledged: list[tuple[str, float]] = []
        self.frame = colour_frame("red", 320, 240)

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=5) as client:
            for seq in range(10_000_000):
                frame_id = f"{self.name}-{seq}"
                try:
                    response = client.post("/v1/lines/tiny/frames", content=self.frame,
                                           headers={"Content-Type": "image/jpeg",
                                                    "X-Frame-Id": frame_id})
                except httpx.HTTPError:
                    return  # the server is gone
                if response.status_code == 200:
                    self.acknowledged.append((frame_id, time.monotonic()))


@pytest.fixture(params=["sqlite", "postgresql"])
def audit_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store the killed service writes: a SQLite file, or a private PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'audit.db'}"
    return request.getfixturevalue("private_postgres").url


def test_kill_9_of_every_serve_process_keeps_decisions_older_than_the_window(
        models_dir: Path, tmp_path: Path, audit_url: str) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({
        "port": port, "workers": 2, "models_dir": str(models_dir), "log_level": "warning",
        "lines": {"tiny": {"model": "tiny", "deadline_ms": 60_000}},
        "audit": {"url": audit_url, "frames_dir": str(tmp_path / "frames"),
                  "commit_interval_ms": COMMIT_INTERVAL_MS},
    }))
    server = start_serve(config, base)
    cameras = [Camera(base, name) for name in ("cam1", "cam2")]
    try:
        for camera in cameras:
            camera.start()
        time.sleep(STREAM_BEFORE_KILL_S)
    finally:
        killed_at = time.monotonic()
        kill_group(server)
    for camera in cameras:
        camera.join(timeout=30)
    acknowledged = {frame_id: at for camera in cameras for frame_id, at in camera.acknowledged}
    must_survive = {frame_id for frame_id, at in acknowledged.items()
                    if at < killed_at - DURABILITY_WINDOW_S}
    assert len(must_survive) >= 20, "too few frames streamed to say anything"

    server = start_serve(config, base)  # restart on the same store: migrations, recovery
    try:
        assert httpx.get(f"{base}/readyz").status_code == 200
    finally:
        kill_group(server)
    engine = create_engine(audit_url)
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "sqlite":
                assert connection.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
            stored = set(connection.scalars(text("SELECT frame_id FROM audit_decisions")))
    finally:
        engine.dispose()

    lost = {frame_id: killed_at - at for frame_id, at in acknowledged.items()
            if frame_id not in stored}
    print(f"\ncrash ({engine.dialect.name}): {len(acknowledged)} decisions acknowledged, "
          f"{len(lost)} lost, oldest lost acknowledged "
          f"{max(lost.values(), default=0) * 1000:.0f} ms before the kill")
    assert must_survive <= stored
