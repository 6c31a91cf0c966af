"""Service fixtures: the real app on the tiny colour model, with a recording audit fake."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from scrapvision.audit.settings import AuditSettings
from scrapvision.records import DecisionRecord
from scrapvision.service.app import create_app
from scrapvision.settings import CONFIG_ENV, LineSettings, Settings

SLOW_BOX_DEADLINE_MS = 60_000  # decisions must not turn 'late' because CI is busy


class RecordingAudit:
    """Stands in for the audit store: keeps what was submitted, tallies it naively."""

    def __init__(self) -> None:
        self.records: list[DecisionRecord] = []
        self.frames: list[bytes | None] = []

    def submit(self, record: DecisionRecord, frame: bytes | None = None) -> None:
        self.records.append(record)
        self.frames.append(frame)

    def tallies(self, line: str, since: Any = None, until: Any = None) -> dict[str, Any]:
        mine = [r for r in self.records if r.line == line
                and (since is None or r.time >= since.timestamp())]
        per_action: dict[str, int] = {}
        for record in mine:
            per_action[record.action] = per_action.get(record.action, 0) + 1
        return {"line": line, "total": len(mine), "per_class": {}, "per_bin": {},
                "per_action": per_action, "late": per_action.get("late", 0),
                "overload": per_action.get("overload", 0), "first_time": None,
                "last_time": None}

    def actions(self) -> list[str]:
        return [r.action for r in self.records]


@pytest.fixture(autouse=True)
def _no_config_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests build their settings explicitly; a developer's config must not leak in."""
    monkeypatch.delenv(CONFIG_ENV, raising=False)


@pytest.fixture
def make_settings(models_dir: Path, tmp_path: Path) -> Callable[..., Settings]:
    """Settings on the tiny model registry with a private SQLite audit store.

    The default line 'tiny' has a deadline no busy test machine misses; tests of the
    deadline itself send capture times in the past.
    """

    def make(**overrides: Any) -> Settings:
        audit = AuditSettings(url=f"sqlite:///{tmp_path / 'audit.db'}",
                              frames_dir=tmp_path / "frames", commit_interval_ms=20)
        line = LineSettings(model="tiny", deadline_ms=SLOW_BOX_DEADLINE_MS)
        # one inference thread: the queueing tests hold it and watch frames wait behind it
        # while the event loop (TestClient's portal) goes on answering
        values: dict[str, Any] = {"models_dir": models_dir, "audit": audit,
                                  "lines": {"tiny": line}, "model_poll_s": 0.05,
                                  "inference": "threads", "inference_threads": 1,
                                  **overrides}
        return Settings(**values)

    return make


@pytest.fixture
def audit() -> RecordingAudit:
    return RecordingAudit()


@pytest.fixture
def make_client(make_settings: Callable[..., Settings],
                audit: RecordingAudit) -> Iterator[Callable[..., TestClient]]:
    """Start the real app (lifespan included) with settings overrides; closed after the test."""
    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        client = TestClient(create_app(make_settings(**overrides), audit_store=audit))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    """The app with its default line ('tiny', the only model in the registry)."""
    return make_client()


def frame_headers(frame_id: str = "f1", capture_time: float | None = None,
                  content_type: str = "image/jpeg", **extra: str) -> dict[str, str]:
    """Headers of a frame captured now (or at `capture_time`)."""
    return {"Content-Type": content_type, "X-Frame-Id": frame_id,
            "X-Capture-Time": repr(time.time() if capture_time is None else capture_time),
            **extra}


def wait_until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Wait for a state change made by another thread or process (fails, never hangs)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(0.01)


class HeldInference:
    """Holds a line's inference threads inside onnxruntime until `release()`.

    `calls` records the batch size of every onnxruntime call.
    """

    def __init__(self, engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.gate = threading.Event()
        self.calls: list[int] = []
        predict = engine.predict

        def held(batch: Any) -> Any:
            self.calls.append(len(batch))
            self.gate.wait()
            return predict(batch)

        monkeypatch.setattr(engine, "predict", held)

    def release(self) -> None:
        self.gate.set()


@pytest.fixture
def hold(monkeypatch: pytest.MonkeyPatch) -> Callable[[Any], HeldInference]:
    """`hold(line)`: stop the line's model inside inference (released after the test)."""
    held: list[HeldInference] = []

    def make(line: Any) -> HeldInference:
        held.append(HeldInference(line.slot.current.engine, monkeypatch))
        return held[-1]

    yield make
    for each in held:
        each.release()
