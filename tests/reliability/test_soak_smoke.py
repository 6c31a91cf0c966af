"""bench/soak.py: a few seconds of the real soak on the tiny model (no timing asserted),
and its pass/fail rule on made-up samples."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tinymodel import colour_frame

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # bench/ is a folder of scripts beside the package

from bench.soak import Sample, problems, summarise  # noqa: E402

from scrapvision.settings import CONFIG_ENV  # noqa: E402


@pytest.fixture
def frames(tmp_path: Path) -> Path:
    folder = tmp_path / "frames"
    folder.mkdir()
    for number, colour in enumerate(("red", "green", "blue")):
        (folder / f"{number}.jpg").write_bytes(colour_frame(colour, 640, 480))
    return folder


def test_short_soak_runs_end_to_end_and_reports_every_window(tiny_model: Path, frames: Path,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "out" / "soak.json"
    env = {key: value for key, value in os.environ.items() if key != CONFIG_ENV}
    run = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--seconds", "6", "--sample-s", "2",
         "--streams", "2", "--rate", "5", "--workers", "1", "--model", str(tiny_model),
         "--frames", str(frames), "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(out.read_text())
    assert [sample["t_s"] for sample in report["samples"]] == [2.0, 4.0, 6.0]
    assert all(sample["fds"] > 0 and sample["rss_mb"] > 0 for sample in report["samples"])
    summary = report["summary"]
    assert summary["decided"] == summary["sent"] > 0 and summary["errors"] == 0
    assert summary["audit_written"] >= summary["sent"] and summary["audit_dropped_full"] == 0


def sample(t_s: float, rss_mb: float, fds: int, errors: int = 0) -> Sample:
    return Sample(t_s=t_s, rss_mb=rss_mb, fds=fds, threads=10, sent=100, decided=100 - errors,
                  late=0, overload=0, errors=errors, fps=10.0, p50_ms=5.0, p99_ms=9.0)


CLEAN_AUDIT = {"written": 1000, "dropped_full": 0, "rejected": 0, "write_errors": 0,
               "buffered": 0}


def test_growth_after_warmup_fails_the_soak_but_startup_growth_does_not() -> None:
    startup_then_flat = [sample(10 * i, 300.0 if i else 200.0, 30 if i else 20)
                         for i in range(20)]
    assert problems(summarise(startup_then_flat, CLEAN_AUDIT), 50, 10) == []
    leaking = [sample(10 * i, 300.0 + 5 * i, 30 + i) for i in range(20)]
    found = problems(summarise(leaking, CLEAN_AUDIT), 50, 10)
    assert any("RSS grew" in p for p in found) and any("descriptors" in p for p in found)


def test_errors_and_lost_audit_records_fail_the_soak() -> None:
    samples = [sample(10 * i, 300.0, 30, errors=int(i == 5)) for i in range(20)]
    lossy = {**CLEAN_AUDIT, "dropped_full": 3}
    found = problems(summarise(samples, lossy), 50, 10)
    assert any("1 frames errored" in p for p in found)
    assert any("dropped 3" in p for p in found)
