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
(`workers_fill_cores`), the first thread of a model is its primary and the others stand by:
the primary takes every frame, and a standby thread takes one only once it has waited a
quarter of its line's deadline (`InferenceJob.wait_until`). A second thread working beside
the first would only slice a core with it and lose the caches, and threads taking frames in
turn cost a thread wake-up per frame: at 16 saturating WebSocket streams over 2 workers the
primary alone gave 0.805x the in-process limit against 0.78x (medians of 12 slices). A
worker holding most of the cameras still takes the second core once its frames wait (4
cameras x 45 frames/s, 80 ms deadline: 99.8-99.9% in time, p99 36-60 ms). With fewer
workers than cores every thread takes frames at once.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
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

    `wait_until`: until when the frame may wait for the model's busy primary thread before a
    standby thread takes it."""

    engine: Engine
    frame: bytes
    fire_time: float
    wait_until: float
    max_pixels: int
    conclude: Callable[[np.ndarray], Any]
    future: Future = field(default_factory=Future)


class InferenceWorkers:
    """`threads` inference threads of one model; with `standby`, all but the first take only
    frames that have waited past their `wait_until`."""

    def __init__(self, name: str, threads: int = 1, max_batch: int = 1,
                 standby: bool = False) -> None:
        self.max_batch = max_batch
        self._jobs: deque[InferenceJob] = deque()
        self._lock = threading.Lock()
        self._queued = threading.Condition(self._lock)  # primaries wait here for frames
        self._overdue = threading.Condition(self._lock)  # standbys wait for a frame to wait
        self._closing = False
        self._batch_sizes = metrics.INFERENCE_BATCH.labels(name)
        self._side_by_side = metrics.INFERENCE_SIDE_BY_SIDE.labels(name)
        primaries = 1 if standby else threads
        self._threads = [threading.Thread(target=self._run, args=(i >= primaries,),
                                          name=f"infer-{name}-{i}", daemon=True)
                         for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def submit(self, job: InferenceJob) -> Future:
        with self._lock:
            if self._closing:
                raise RuntimeError("inference workers are closed")
            self._jobs.append(job)
            self._queued.notify()
            if len(self._jobs) == 1:  # the standbys time the new head of the queue
                self._overdue.notify_all()
        return job.future

    def waiting(self) -> int:
        """Frames queued and not yet picked up by a thread."""
        return len(self._jobs)

    def close(self) -> None:
        """Finish the frames already queued, then stop the threads."""
        with self._lock:
            self._closing = True
            self._queued.notify_all()
            self._overdue.notify_all()
        for thread in self._threads:
            thread.join()

    def _run(self, standby: bool) -> None:
        while batch := (self._take_overdue() if standby else self._take()):
            if standby:
                self._side_by_side.inc()
            self._infer(batch)

    def _take(self) -> list[InferenceJob]:
        """The next frames (up to `max_batch`) once there are any; [] once closed and empty."""
        with self._lock:
            while not self._jobs and not self._closing:
                self._queued.wait()
            return self._pop()

    def _take_overdue(self) -> list[InferenceJob]:
        """Frames once the oldest has waited as long as it may; [] once closed."""
        with self._lock:
            while not self._closing:
                if not self._jobs:
                    self._overdue.wait()
                    continue
                # a camera clock far ahead must not overflow the timeout
                patience = min(self._jobs[0].wait_until - time.time(), threading.TIMEOUT_MAX)
                if patience <= 0:
                    return self._pop()
                self._overdue.wait(patience)
            return []  # the primary finishes what is queued

    def _pop(self) -> list[InferenceJob]:
        return [self._jobs.popleft() for _ in range(min(self.max_batch, len(self._jobs)))]

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
                probs = engine.predict(images_in)
                for (job, _), row in zip(group, probs):
                    job.future.set_result(job.conclude(row))
            except Exception as exc:  # noqa: BLE001 - every frame of the call gets the error
                for job, _ in group:
                    if not job.future.done():
                        job.future.set_exception(exc)
