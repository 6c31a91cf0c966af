"""Inference threads of one model, with optional micro-batching.

Each model has `threads` threads taking frames from one queue. A thread takes the next frame
and, when `max_batch` > 1, whatever else is already waiting (up to `max_batch`), decodes
them and runs them through onnxruntime in one call. Nothing waits for a batch to fill: a
lone frame is inferred at once. On 2 CPU cores batching lost 10-30% (onnxruntime's
per-image cost does not fall with batch size there), so the default is `max_batch` = 1,
which makes this a plain thread pool; larger CPUs or GPUs may gain from more.

Each frame's fire time is checked when its thread picks it up: a frame that waited past it
is answered None (late) and never decoded or inferred.

When the worker processes' onnxruntime threads already fill the cores
(`workers_fill_cores`), the threads of one model run onnxruntime one call at a time while
their frames can wait: a second call would only slice a core with the first and lose the
caches, which at 16 saturating streams over 2 workers cost 3-5% of the frames/s. A frame
that has waited a quarter of its line's deadline (`InferenceJob.wait_until`) gets a call
beside the other at once, so a worker holding most of the streams still takes the second
core when the other worker leaves it idle. With fewer workers than cores the calls always
run side by side.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scrapvision.decode import decode_frame
from scrapvision.engine import Engine
from scrapvision.service import metrics


def workers_fill_cores(workers: int, ort_threads: int) -> bool:
    """True when the workers' onnxruntime threads are at least as many as this process's
    CPUs: then the other cores are already busy with the other workers' calls."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return workers * ort_threads >= (cpus or 1)


@dataclass(slots=True)
class InferenceJob:
    """One frame to decode and infer; `conclude` turns its probabilities into a result.

    `wait_until`: until when the frame may wait for another thread's call to end."""

    engine: Engine
    frame: bytes
    fire_time: float
    wait_until: float
    max_pixels: int
    conclude: Callable[[np.ndarray], Any]
    future: Future = field(default_factory=Future)


class InferenceWorkers:
    def __init__(self, name: str, threads: int = 1, max_batch: int = 1,
                 one_call_at_a_time: bool = False) -> None:
        self.max_batch = max_batch
        self.one_call_at_a_time = one_call_at_a_time
        self._jobs: queue.SimpleQueue[InferenceJob | None] = queue.SimpleQueue()
        self._batch_sizes = metrics.INFERENCE_BATCH.labels(name)
        self._side_by_side = metrics.INFERENCE_SIDE_BY_SIDE.labels(name)
        self._one_call = threading.Lock()
        self._threads = [threading.Thread(target=self._run, name=f"infer-{name}-{i}",
                                          daemon=True) for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def submit(self, job: InferenceJob) -> Future:
        self._jobs.put(job)
        return job.future

    def waiting(self) -> int:
        """Frames queued and not yet picked up by a thread."""
        return self._jobs.qsize()

    def close(self) -> None:
        """Finish the frames already queued, then stop the threads."""
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            batch = [job]
            while len(batch) < self.max_batch:
                try:
                    extra = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if extra is None:  # keep the stop signal for the next round
                    self._jobs.put(None)
                    break
                batch.append(extra)
            self._infer(batch)

    def _infer(self, batch: list[InferenceJob]) -> None:
        ready: list[InferenceJob] = []
        images: list[np.ndarray] = []
        now = time.time()
        for job in batch:
            if not job.future.set_running_or_notify_cancel():
                continue  # the client went away
            if now > job.fire_time:
                job.future.set_result(None)
                continue
            try:
                images.append(decode_frame(job.frame, job.engine.input_size,
                                           job.engine.info.colour_order, job.max_pixels))
                ready.append(job)
            except Exception as exc:  # noqa: BLE001 - DecodeError and anything else: to the caller
                job.future.set_exception(exc)
        # frames taken during a model swap may belong to two engines: one call per engine
        for engine in {id(job.engine): job.engine for job in ready}.values():
            group = [(job, image) for job, image in zip(ready, images) if job.engine is engine]
            self._batch_sizes.observe(len(group))
            try:
                images_in = (group[0][1][np.newaxis] if len(group) == 1  # a view, no copy
                             else np.stack([image for _, image in group]))
                probs = self._predict(engine, images_in,
                                      min(job.wait_until for job, _ in group))
                for (job, _), row in zip(group, probs):
                    job.future.set_result(job.conclude(row))
            except Exception as exc:  # noqa: BLE001 - every frame of the call gets the error
                for job, _ in group:
                    if not job.future.done():
                        job.future.set_exception(exc)

    def _predict(self, engine: Engine, images: np.ndarray, wait_until: float) -> np.ndarray:
        """`engine.predict` once another thread's call of this model has ended, or beside
        it when that has not happened by `wait_until`."""
        if not self.one_call_at_a_time:
            return engine.predict(images)
        # a camera clock far ahead must not overflow the timeout
        patience = min(max(0.0, wait_until - time.time()), threading.TIMEOUT_MAX)
        alone = self._one_call.acquire(timeout=patience)
        if not alone:
            self._side_by_side.inc()
        try:
            return engine.predict(images)
        finally:
            if alone:
                self._one_call.release()
