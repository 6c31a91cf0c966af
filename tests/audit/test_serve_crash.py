"""kill -9 of `scrapvision serve` mid-stream: after a restart the audit store opens
cleanly and holds every decision answered more than the commit window before the kill."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy import select
from tinymodel import colour_frame

from scrapvision.audit.settings import AuditSettings
from scrapvision.audit.store import AuditStore
from scrapvision.audit.tables import decisions
from scrapvision.settings import CONFIG_ENV

MARGIN_S = 2.0  # far beyond the 100 ms commit window used here: a busy box cannot flake
READY_TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _serve(config: Path) -> tuple[subprocess.Popen, str]:
    settings = yaml.safe_load(config.read_text())
    env = {key: value for key, value in os.environ.items() if key != CONFIG_ENV}
    server = subprocess.Popen([sys.executable, "-m", "scrapvision", "serve", "--config",
                               str(config)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{settings['port']}"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"scrapvision serve exited with {server.returncode}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return server, base
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.kill()
    pytest.fail("scrapvision serve did not become ready")


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
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({
        "port": _free_port(), "workers": 1, "models_dir": str(models_dir),
        "log_level": "warning", "lines": {"tiny": {"model": "tiny", "deadline_ms": 60_000}},
        "audit": {"url": audit.url, "frames_dir": str(audit.frames_dir),
                  "commit_interval_ms": audit.commit_interval_ms},
    }))
    server, base = _serve(config)
    camera = Camera(base)
    try:
        camera.start()
        while len(camera.answered) < 50:
            if not camera.is_alive():
                pytest.fail("the camera stopped before the crash")
            time.sleep(0.05)
        time.sleep(MARGIN_S)  # the stream goes on; then the hard kill
    finally:
        os.kill(server.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        server.wait()
    camera.join(timeout=10)
    durable = {frame_id for frame_id, answered in camera.answered
               if answered < killed_at - MARGIN_S}
    assert len(durable) >= 50

    server, base = _serve(config)  # restart on the same store
    try:
        assert httpx.get(f"{base}/v1/audit/stats").json()["write_errors"] == 0
    finally:
        server.terminate()
        server.wait(timeout=30)
    store = AuditStore(audit).start()
    try:
        with store.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
            stored = set(connection.scalars(select(decisions.c.frame_id)))
    finally:
        store.close()
    assert durable <= stored
