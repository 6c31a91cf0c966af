"""`scrapvision serve` for real: uvicorn with two worker processes on a free port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml
from tinymodel import colour_frame
from websockets.sync.client import connect

from scrapvision.service import reuseport
from tests.service.conftest import frame_headers, wait_until
from tests.service.test_models import add_version


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(tmp_path: Path, models_dir: Path, port: int) -> Path:
    """Two workers, one line on the tiny model, SQLite store."""
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({
        "port": port, "workers": 2, "models_dir": str(models_dir), "model_poll_s": 0.1,
        "lines": {"tiny": {"model": "tiny", "deadline_ms": 60_000}},
        "audit": {"url": f"sqlite:///{tmp_path / 'audit.db'}",
                  "frames_dir": str(tmp_path / "frames")},
    }))
    return config


def serve_command(config: Path) -> tuple[list[str], dict[str, str]]:
    """The `scrapvision serve` command line and an environment without stray settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCRAPVISION_")}
    env["OMP_NUM_THREADS"] = "1"
    return [sys.executable, "-m", "scrapvision", "serve", "--config", str(config)], env


@pytest.fixture
def serving(models_dir: Path, tmp_path: Path
            ) -> Iterator[tuple[subprocess.Popen[bytes], httpx.Client]]:
    """The serve process (2 workers, `write_config`) and a client; stopped with SIGTERM."""
    port = free_port()
    command, env = serve_command(write_config(tmp_path, models_dir, port))
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=open(tmp_path / "serve.log", "wb"))
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

    def ready() -> bool:
        assert process.poll() is None, (tmp_path / "serve.log").read_text()
        try:
            return client.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(ready, timeout_s=60)
        yield process, client
    finally:
        client.close()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


@pytest.fixture
def server(serving: tuple[subprocess.Popen[bytes], httpx.Client]) -> httpx.Client:
    return serving[1]


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


def server_sockets(server_pid: int, port: int) -> list[tuple[int, Any]]:
    """(pid, psutil connection) of each TCP socket on `port` of the serve process tree."""
    parent = psutil.Process(server_pid)
    return [(process.pid, conn) for process in [parent, *parent.children(recursive=True)]
            for conn in process.net_connections("tcp") if conn.laddr.port == port]


@pytest.mark.skipif(not reuseport.balances(), reason="the kernel spreads SO_REUSEPORT on Linux")
def test_cameras_connecting_at_once_are_spread_over_both_workers(
        serving: tuple[subprocess.Popen[bytes], httpx.Client]) -> None:
    process, client = serving
    port = client.base_url.port
    assert port is not None

    def listening() -> set[int]:
        return {pid for pid, conn in server_sockets(process.pid, port)
                if conn.status == psutil.CONN_LISTEN}

    # ready means both workers have started, whichever of them answered
    assert client.get("/readyz").json()["workers"] == {"started": 2, "expected": 2}
    assert len(listening()) == 2
    # all connected before any is served, as cameras starting together: a burst in the backlog
    cameras = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(32)]
    try:
        for camera in cameras:  # one request each, and the connection stays open (keep-alive)
            camera.sendall(b"GET /healthz HTTP/1.1\r\nHost: scrapvision\r\n\r\n")
        for camera in cameras:
            assert camera.recv(4096).startswith(b"HTTP/1.1 200 ")
        owners = {conn.raddr.port: pid for pid, conn in server_sockets(process.pid, port)
                  if conn.status == psutil.CONN_ESTABLISHED}
        held = Counter(owners.get(camera.getsockname()[1]) for camera in cameras)
    finally:
        for camera in cameras:
            camera.close()
    children = {child.pid for child in psutil.Process(process.pid).children()}
    assert set(held) <= children, held  # every connection found, none held by the parent
    # one SO_REUSEPORT socket per worker: the kernel hashes each connection to one of them, so
    # an even spread leaves fewer than 4 of 32 on a worker about once in 400,000 runs; one
    # shared socket gives the burst to whichever worker woke first
    assert len(held) == 2 and min(held.values()) >= 4, held
    # and the parent has no listening socket the kernel could hand connections to
    assert process.pid not in listening()


def test_serve_refuses_a_port_another_server_holds(models_dir: Path, tmp_path: Path) -> None:
    with socket.socket() as other:
        if hasattr(socket, "SO_REUSEPORT"):  # as another `scrapvision serve` would hold it
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        command, env = serve_command(write_config(tmp_path, models_dir, port))
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            _, stderr = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # it serves: stop it and its workers
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            pytest.fail("scrapvision serve started on a port another server holds")
    assert process.returncode != 0
    assert f"127.0.0.1:{port}" in stderr and "in use" in stderr, stderr


def on_own_connection(base_url: httpx.URL, method: str, path: str,
                      **request: Any) -> httpx.Response:
    """One request on a new connection: the kernel may hand it to either worker."""
    with httpx.Client(base_url=base_url, timeout=30) as own:
        return own.request(method, path, **request)


@pytest.mark.skipif(not reuseport.balances(), reason="the kernel spreads SO_REUSEPORT on Linux")
def test_audit_stats_add_up_over_both_workers(server: httpx.Client) -> None:
    total = 40
    for number in range(total):  # cameras reconnecting: each frame may go to either worker
        response = on_own_connection(server.base_url, "POST", "/v1/lines/tiny/frames",
                                     content=colour_frame("red"),
                                     headers=frame_headers(f"c{number}"))
        assert response.status_code == 200, response.text

    def stats() -> dict[str, Any]:
        return on_own_connection(server.base_url, "GET", "/v1/audit/stats").json()

    wait_until(lambda: stats()["written"] == total, timeout_s=10)  # a group commit: <= 0.2 s
    answers = [stats() for _ in range(16)]
    # whichever worker answers, the counts are both workers' together
    assert [answer["written"] for answer in answers] == [total] * len(answers)
    for answer in answers:
        assert (answer["scope"], answer["workers"]) == ("all workers", 2)
        assert answer["commits"] >= 2 and answer["last_commit_time"] is not None
        assert {answer[key] for key in ("buffered", "dropped_full", "rejected", "lost_at_close",
                                        "write_errors", "submit_errors")} == {0}
    own = {answer["this_worker"]["pid"]: answer["this_worker"]["written"] for answer in answers}
    # both workers decided frames and answered stats (2**-15 odds of one answering all 16)
    assert len(own) == 2 and min(own.values()) > 0 and sum(own.values()) == total, own
    metrics = on_own_connection(server.base_url, "GET", "/metrics").text
    assert gauge(metrics, 'scrapvision_audit_records_total{outcome="written"}') == total


def test_websocket_stream_declines_compression_that_clients_offer(server: httpx.Client) -> None:
    # stock clients (here `websockets`) offer permessage-deflate; frames do not compress, so
    # the server declines it and neither side spends CPU deflating JPEGs
    url = f"ws://127.0.0.1:{server.base_url.port}/v1/lines/tiny/stream"
    with connect(url, compression="deflate") as stream:
        assert "permessage-deflate" in stream.request.headers["Sec-WebSocket-Extensions"]
        assert stream.response.headers.get("Sec-WebSocket-Extensions") is None
        stream.send(colour_frame("red"))
        assert json.loads(stream.recv(timeout=30))["class_name"] == "red"
