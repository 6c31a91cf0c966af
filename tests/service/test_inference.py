"""Where inference runs: the primary (the event loop, or the first inference thread) takes
every frame while frames can wait, a standby thread joins it once a frame has waited as
long as it may."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import wait
from types import SimpleNamespace

import numpy as np
import pytest

from scrapvision.service import inference
from scrapvision.service.inference import InferenceJob, InferenceWorkers, workers_fill_cores

CALL_S = 0.2
SMALL = (8, 8)  # a frame's (width, height), as its header declares them


class SlowEngine:
    """Stands in for `Engine`: each call takes CALL_S and records how many ran at once."""

    input_size = (8, 8)
    info = SimpleNamespace(colour_order="RGB")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = 0
        self.most_at_once = 0
        self.threads: list[str] = []  # the thread of each call

    def predict(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            self.threads.append(threading.current_thread().name)
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        time.sleep(CALL_S)
        with self._lock:
            self.running -= 1
        return np.full((len(batch), 2), 0.5)


@pytest.fixture(autouse=True)
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inference, "decode_frame",
                        lambda *args, **kwargs: np.zeros((8, 8, 3), np.uint8))


def run_jobs(engine: SlowEngine, seconds_may_wait: float, count: int) -> list[object]:
    workers = InferenceWorkers(f"test-{seconds_may_wait}", threads=2, standby=True)
    try:
        now = time.time()
        jobs = [InferenceJob(engine, b"", SMALL, now + 60, now + seconds_may_wait, lambda p: "ok")
                for _ in range(count)]
        futures = [workers.submit(job) for job in jobs]
        wait(futures, timeout=10)
        return [future.result() for future in futures]
    finally:
        workers.close()


@pytest.mark.parametrize("seconds_may_wait", [60, 1e12])  # 1e12: a camera clock far ahead
def test_calls_run_one_at_a_time_while_frames_can_wait(seconds_may_wait: float) -> None:
    engine = SlowEngine()
    assert run_jobs(engine, seconds_may_wait, count=6) == ["ok"] * 6
    assert engine.most_at_once == 1


def test_calls_run_side_by_side_once_a_frame_has_waited_its_share() -> None:
    engine = SlowEngine()
    # each frame may wait a tenth of a call: the second cannot wait for the first call
    assert run_jobs(engine, seconds_may_wait=CALL_S / 10, count=2) == ["ok", "ok"]
    assert engine.most_at_once == 2


def test_calls_always_run_side_by_side_with_fewer_workers_than_cores() -> None:
    engine = SlowEngine()
    workers = InferenceWorkers("test-spare-cores", threads=2)  # standby off
    try:
        now = time.time()
        futures = [workers.submit(InferenceJob(engine, b"", SMALL, now + 60, now + 60,
                                               lambda p: "ok")) for _ in range(2)]
        assert [future.result(timeout=10) for future in futures] == ["ok", "ok"]
    finally:
        workers.close()
    assert engine.most_at_once == 2


def test_workers_fill_cores_compares_onnxruntime_threads_with_cpus(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inference.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert workers_fill_cores(workers=2, ort_threads=1)
    assert workers_fill_cores(workers=1, ort_threads=2)
    assert not workers_fill_cores(workers=1, ort_threads=1)


def test_queued_frames_are_finished_on_close_and_later_ones_refused() -> None:
    engine = SlowEngine()
    workers = InferenceWorkers("test-close", threads=2, standby=True)
    now = time.time()
    futures = [workers.submit(InferenceJob(engine, b"", SMALL, now + 60, now + 60,
                                           lambda p: "ok")) for _ in range(3)]
    workers.close()  # the standby leaves at once, the primary finishes the queue
    assert [future.result(timeout=0) for future in futures] == ["ok"] * 3
    assert engine.most_at_once == 1
    with pytest.raises(RuntimeError, match="closed"):
        workers.submit(InferenceJob(engine, b"", SMALL, now + 60, now + 60, lambda p: "ok"))


def run_on_loop(engine: SlowEngine, standbys: int, seconds_may_wait: float,
                seconds_to_fire: float, count: int,
                dimensions: tuple[int, int] = SMALL) -> list[object]:
    """`count` frames arriving together at a worker that infers on its event loop."""
    workers = InferenceWorkers(f"test-loop-{standbys}", threads=standbys, on_loop=True)

    async def arrive_together() -> list[object]:
        await asyncio.sleep(0.05)  # the standbys are waiting for work
        now = time.time()
        jobs = [InferenceJob(engine, b"", dimensions, now + seconds_to_fire,
                             now + seconds_may_wait, lambda p: "ok") for _ in range(count)]
        return await asyncio.gather(*(workers.run(job) for job in jobs))

    try:
        return asyncio.run(arrive_together())
    finally:
        workers.close()


def test_on_the_loop_frames_are_inferred_in_its_thread_one_at_a_time() -> None:
    engine = SlowEngine()
    assert run_on_loop(engine, standbys=1, seconds_may_wait=60, seconds_to_fire=60,
                       count=3) == ["ok"] * 3
    assert engine.threads == [threading.current_thread().name] * 3
    assert engine.most_at_once == 1


def test_on_the_loop_a_frame_that_waited_its_share_goes_to_an_idle_standby() -> None:
    engine = SlowEngine()
    # the 2nd frame waits a whole call behind the 1st: overdue, so the idle standby takes
    # it; the 3rd is overdue too but the standby is busy, so the loop infers it meanwhile
    assert run_on_loop(engine, standbys=1, seconds_may_wait=CALL_S / 4, seconds_to_fire=60,
                       count=3) == ["ok"] * 3
    loop_thread = threading.current_thread().name
    assert sorted(engine.threads) == sorted([loop_thread, loop_thread, "infer-test-loop-1-0"])
    assert engine.most_at_once == 2


def test_on_the_loop_a_frame_whose_fire_time_passed_while_it_waited_is_not_inferred() -> None:
    engine = SlowEngine()
    # no standby: the 2nd frame waits behind the 1st call, past its fire time
    assert run_on_loop(engine, standbys=0, seconds_may_wait=CALL_S / 4,
                       seconds_to_fire=CALL_S / 2, count=2) == ["ok", None]
    assert len(engine.threads) == 1


@pytest.mark.parametrize(("standbys", "width", "on_loop"), [
    (1, 1920, True),  # 1080p: decoded on the loop
    (1, 2000, False),  # larger: a standby decodes it, so the loop is not held
    (0, 4000, True),  # no standby to take it: the loop decodes it
])
def test_on_the_loop_frames_larger_than_1080p_go_to_a_standby(
        standbys: int, width: int, on_loop: bool) -> None:
    engine = SlowEngine()
    assert run_on_loop(engine, standbys, seconds_may_wait=60, seconds_to_fire=60, count=1,
                       dimensions=(width, 1080)) == ["ok"]
    assert (engine.threads == [threading.current_thread().name]) is on_loop
