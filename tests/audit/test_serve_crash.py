"""kill -9 of `scrapvision serve` mid-stream: after a restart the audit store opens
cleanly and holds every decision answered more than the commit window before the kill."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import yaml
from reliability.serving import free_port, kill_group, start_serve
from sqlalchemy import select
from tinymodel import colour_frame

from scrapvision.audit.settings import AuditSettings
from scrapvision.audit.store import AuditStore
from scrapvision.audit.tables import decisions

MARGIN_S = 2.0  # far beyond the 100 ms commit window used here: a busy box cannot flake


class Camera(threading.Thread):
    """Posts frames one after another; remembers when each decision was answered."""

    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.answered: list[tuple[str, float]] = []
        self.frame = colour_frame("red", 320, 240)

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=5) as client:
            for seq in range(1_000_000):
                try:
                    response = client.post("/v1/lines/tiny/frames", content=self.frame,
                                           headers={"Content-Type": "image/jpeg",
                                                    "X-Frame-Id": f"f{seq}"})
                except httpx.HTTPError:
                    return  # the server is gone
                if response.status_code == 200:
                    self.answered.append((f"f{seq}", time.monotonic()))
                time.sleep(0.005)


def test_kill_9_of_serve_mid_stream(models_dir, tmp_path):
    audit = AuditSettings(url=f"sqlite:///{tmp_path / 'audit.db'}",
                          frames_dir=tmp_path / "frames", commit_interval_ms=100)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({
        "port": port, "workers": 1, "models_dir": str(models_dir),
        "log_level": "warning", "lines": {"tiny": {"model": "tiny", "deadline_ms": 60_000}},
        "audit": {"url": audit.url, "frames_dir": str(audit.frames_dir),
                  "commit_interval_ms": audit.commit_interval_ms},
    }))
    server = start_serve(config, base)
    camera = Camera(base)
    try:
        camera.start()
        while len(camera.answered) < 50:
            if not camera.is_alive():
                pytest.fail("the camera stopped before the crash")
            time.sleep(0.05)
        time.sleep(MARGIN_S)  # the stream goes on; then the hard kill
    finally:
        kill_group(server)
    killed_at = time.monotonic()
    camera.join(timeout=10)
    durable = {frame_id for frame_id, answered in camera.answered
               if answered < killed_at - MARGIN_S}
    assert len(durable) >= 50

    server = start_serve(config, base)  # restart on the same store
    try:
        assert httpx.get(f"{base}/v1/audit/stats").json()["write_errors"] == 0
    finally:
        kill_group(server)
    store = AuditStore(audit).start()
    try:
        with store.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
            stored = set(connection.scalars(select(decisions.c.frame_id)))
    finally:
        store.close()
    assert durable <= stored
