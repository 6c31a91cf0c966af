"""Overload of a real 2-worker `scrapvision serve`: 32 closed-loop cameras on one line
whose queue holds 2 frames per worker.

What must hold: every frame is answered at once, decided (200) or refused (503 with
Retry-After and an 'overload' record), never an error or a hang; the probes still answer;
and the store's tallies count every frame the cameras sent, overloads included.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import cv2
import httpx
import numpy as np
import yaml

from .serving import free_port, kill_group, start_serve

CAMERAS = 32
FLOOD_S = 3.0
MAX_IN_FLIGHT = 2


async def camera(client: httpx.AsyncClient, frame: bytes, until: float,
                 answers: Counter[str]) -> None:
    while time.monotonic() < until:
        response = await client.post("/v1/lines/tiny/frames", content=frame,
                                     headers={"Content-Type": "image/jpeg"})
        if response.status_code == 503:
            assert response.headers["Retry-After"] == "1"
            assert response.json()["action"] == "overload"
        answers[str(response.status_code)] += 1


async def flood(base: str, frame: bytes) -> tuple[Counter[str], int]:
    """(answers by status, /healthz answers during the flood)."""
    answers: Counter[str] = Counter()
    until = time.monotonic() + FLOOD_S
    limits = httpx.Limits(max_connections=CAMERAS + 1)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
        async def probe() -> int:
            healthy = 0
            while time.monotonic() < until:
                healthy += (await client.get("/healthz")).status_code == 200
                await asyncio.sleep(0.2)
            return healthy

        *_, healthy = await asyncio.gather(
            *(camera(client, frame, until, answers) for _ in range(CAMERAS)), probe())
    return answers, healthy


def test_flood_is_answered_503_with_retry_after_and_every_frame_counted(
        models_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({
        "port": port, "workers": 2, "models_dir": str(models_dir), "log_level": "warning",
        "lines": {"tiny": {"model": "tiny", "deadline_ms": 60_000,
                           "max_in_flight": MAX_IN_FLIGHT}},
        "audit": {"url": f"sqlite:///{tmp_path / 'audit.db'}",
                  "frames_dir": str(tmp_path / "frames"), "commit_interval_ms": 50},
    }))
    noisy = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    frame = cv2.imencode(".jpg", noisy)[1].tobytes()  # costs a few ms to decode
    server = start_serve(config, base)
    try:
        answers, healthy = asyncio.run(flood(base, frame))
        sent = sum(answers.values())
        tallies = None
        for _ in range(600):  # the store commits every 50 ms; wait for the last commit
            tallies = httpx.get(f"{base}/v1/lines/tiny/tallies").json()["since_start"]
            if tallies["total"] >= sent:
                break
            time.sleep(0.05)
    finally:
        kill_group(server)
    print(f"\noverload: {sent} frames in {FLOOD_S:.0f} s from {CAMERAS} cameras: "
          f"{answers['200']} decided, {answers['503']} refused 503; "
          f"/healthz answered {healthy} times meanwhile")
    assert set(answers) <= {"200", "503"} and answers["503"] > 0
    assert healthy > 0
    assert tallies["total"] == sent
    assert tallies["overload"] == answers["503"]
