"""`scrapvision serve` for real: uvicorn with two worker processes on a free port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from tinymodel import colour_frame

from tests.service.conftest import frame_headers, wait_until
from tests.service.test_models import add_version


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(models_dir: Path, tmp_path: Path) -> Iterator[httpx.Client]:
    """Two workers, one line on the tiny model, SQLite store; stopped with SIGTERM."""
    port = free_port()
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({
        "port": port, "workers": 2, "models_dir": str(models_dir), "model_poll_s": 0.1,
        "lines": {"tiny": {"model": "tiny", "deadline_ms": 60_000}},
        "audit": {"url": f"sqlite:///{tmp_path / 'audit.db'}",
                  "frames_dir": str(tmp_path / "frames")},
    }))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCRAPVISION_")}
    env["OMP_NUM_THREADS"] = "1"
    process = subprocess.Popen(
        [sys.executable, "-m", "scrapvision", "serve", "--config", str(config)],
        env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "wb"))
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

    def ready() -> bool:
        assert process.poll() is None, (tmp_path / "serve.log").read_text()
        try:
            return client.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(ready, timeout_s=60)
        yield client
    finally:
        client.close()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def gauge(metrics: str, sample: str) -> float | None:
    """Value of one sample (`name{labels}`) in Prometheus text, None when absent."""
    for row in metrics.splitlines():
        name, _, value = row.partition(" ")
        if name == sample:
            return float(value)
    return None


def test_swap_under_load_reaches_every_worker_without_a_failed_request(
        server: httpx.Client, models_dir: Path, tmp_path: Path) -> None:
    add_version(models_dir, tmp_path, "v2")
    failures: list[str] = []
    sent = [0]
    stop = threading.Event()

    def camera() -> None:
        with httpx.Client(base_url=server.base_url, timeout=30) as own:
            while not stop.is_set():
                response = own.post("/v1/lines/tiny/frames", content=colour_frame("red"),
                                    headers=frame_headers())
                sent[0] += 1
                if response.status_code != 200 or response.json()["action"] != "eject":
                    failures.append(response.text)

    cameras = [threading.Thread(target=camera) for _ in range(3)]
    for thread in cameras:
        thread.start()
    try:
        wait_until(lambda: sent[0] >= 20)
        loaded = server.post("/v1/models/tiny/load", json={"version": "v2"})
        assert loaded.status_code == 200, loaded.text
        # the model-info gauge is the max over live workers: v1 at 0 means none serves it
        wait_until(lambda: gauge(server.get("/metrics").text,
                                 'scrapvision_model_info{model="tiny",version="v1"}') == 0.0)
        before = sent[0]
        wait_until(lambda: sent[0] >= before + 20)
    finally:
        stop.set()
        for thread in cameras:
            thread.join()
    assert failures == []
    metrics = server.get("/metrics").text
    assert gauge(metrics, 'scrapvision_model_info{model="tiny",version="v2"}') == 1.0
    # counters add up over both worker processes
    ejected = gauge(metrics, 'scrapvision_decisions_total'
                             '{action="eject",class_name="red",line="tiny"}')
    assert ejected == sent[0]
    for _ in range(10):
        response = server.post("/v1/lines/tiny/frames", content=colour_frame("red"))
        assert response.json()["model_version"] == "v2"
    # both workers' decisions land in the one store: tallies add up
    total = sent[0] + 10
    wait_until(lambda: server.get("/v1/lines/tiny/tallies").json()["since_start"]["total"]
               == total)


def test_serve_refuses_a_missing_config_file(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "scrapvision", "serve", "--config",
                             str(tmp_path / "nope.yaml")], capture_output=True, text=True)
    assert result.returncode != 0
    assert "nope.yaml" in result.stderr
