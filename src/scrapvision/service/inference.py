"""Where a model's frames are decoded and inferred: on the event loop, or in threads.

`inference: loop` (the default): each worker process decodes and infers a frame on its
event loop, in the request's own task, with no hand-off to a thread and back, no thread
wake-up and no contention for the GIL: the in-process limit's own layout, plus HTTP. With
2 workers x 1 onnxruntime thread on 2 cores, 16 saturating streams gave 0.85x the
in-process limit over HTTP and 0.88x over WebSocket, against 0.77-0.82x and 0.83-0.85x
with a primary and a standby inference thread per worker (medians of 5 alternating slices
each, bench/RESULTS.md). While a frame is inferred (~5 ms) the loop reads nothing: the
next frames wait in their sockets, which TCP bounds. A frame yields to the loop once before
its inference, so frames that arrived together all count as in flight (the line's
`max_in_flight` still answers 503) and each is checked against its fire time when its turn
comes. The `threads` threads stand by: a frame that has waited behind the loop past its
`wait_until` (a quarter of its line's deadline) goes to an idle one, so a worker holding
most of the cameras still takes another core; so does any frame larger than 1080p
(`LOOP_MAX_PIXELS`), whose decode would hold the loop. Frames go one at a time.

`inference: threads`: the loop stays free and the model's `threads` threads take frames
from one queue. A thread takes the next frame and, when `max_batch` > 1, whatever else is
already waiting (up to `max_batch`), and runs them through onnxruntime in one call. Nothing
waits for a batch to fill: a lone frame is inferred at once. On 2 CPU cores batching lost
10-30% (onnxruntime's per-image cost does not fall with batch size there); larger CPUs or
GPUs may gain from it. When the worker processes' onnxruntime threads already fill the
cores (`workers_fill_cores`), the first thread is the primary and takes every frame, and
the others stand by as above (the primary alone: 0.805x against 0.78x over WebSocket for
two threads taking frames in turn, 12 slices each). With fewer workers than cores every
thread takes frames at once.

Either way a frame's fire time is checked when its inference starts: a frame that waited
past it is answered None (late) and never decoded or inferred.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from scrapvision.decode import decode_frame
from scrapvision.engine import Engine
from scrapvision.service import metrics


# Frames of more pixels than 1080p go to the standby threads even when inference runs on
# the loop: the costliest frame the decode limits admit (a 40 MP PNG) takes about 1 s to
# decode, and on the loop it would hold every other frame of its worker that long.
LOOP_MAX_PIXELS = 1920 * 1080


def workers_fill_cores(workers: int, ort_threads: int) -> bool:
    """True when the workers' onnxruntime threads are at least as many as this process's
    CPUs: then the other cores are already busy with the other workers' calls."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return workers * ort_threads >= (cpus or 1)


@dataclass(slots=True)
class InferenceJob:
    """One frame to decode and infer; `conclude` turns its probabilities into a result.

    `dimensions`: (width, height) from the frame's header, already checked against the
    line's pixel limit. `wait_until`:
    until when the frame may wait for the model's busy primary thread before a standby
    thread takes it. `future`: set when the job is handed to a thread."""

    engine: Engine
    frame: bytes
    dimensions: tuple[int, int]
    fire_time: float
    wait_until: float
    conclude: Callable[[np.ndarray], Any]
    future: Future | None = None

    def decode(self) -> np.ndarray:
        engine = self.engine
        return decode_frame(self.frame, engine.input_size, engine.info.colour_order,
                            dimensions=self.dimensions)


class InferenceWorkers:
    """Inference of one model: on the event loop (`on_loop`) with `threads` standing by, or in
    `threads` threads of which, with `standby`, all but the first take only frames that have
    waited past their `wait_until`."""

    def __init__(self, name: str, threads: int = 1, max_batch: int = 1,
                 standby: bool = False, on_loop: bool = False) -> None:
        self.max_batch = max_batch
        self.on_loop = on_loop
        self._idle_standbys = 0  # standbys waiting for a frame
        self._jobs: deque[InferenceJob] = deque()
        self._lock = threading.Lock()
        self._queued = threading.Condition(self._lock)  # primaries wait here for frames
        self._overdue = threading.Condition(self._lock)  # standbys wait for a frame to wait
        self._closing = False
        self._batch_sizes = metrics.INFERENCE_BATCH.labels(name)
        self._side_by_side = metrics.INFERENCE_SIDE_BY_SIDE.labels(name)
        primaries = 0 if on_loop else 1 if standby else threads
        self._threads = [threading.Thread(target=self._run, args=(i >= primaries,),
                                          name=f"infer-{name}-{i}", daemon=True)
                         for i in range(threads)]
        for thread in self._threads:
            thread.start()

    async def run(self, job: InferenceJob) -> Any:
        """The job's result (None: late), inferred on this event loop or by a thread."""
        if not self.on_loop:
            return await asyncio.wrap_future(self.submit(job))
        width, height = job.dimensions
        if self._threads and width * height > LOOP_MAX_PIXELS:
            job.wait_until = 0.0  # a standby takes it at once
            return await asyncio.wrap_future(self.submit(job))
        await asyncio.sleep(0)  # frames that arrived with this one take their places first
        if time.time() > job.wait_until and self._hand_to_idle_standby(job):
            return await asyncio.wrap_future(job.future)
        return self._infer_here(job)

    def _infer_here(self, job: InferenceJob) -> Any:
        """The job's result (None: late) from this thread, the event loop: no future and no
        batch to sort out, which would cost as much again as the call itself around it."""
        if time.time() > job.fire_time:
            return None
        image = job.decode()
        self._batch_sizes.observe(1)
        return job.conclude(job.engine.predict(image[np.newaxis])[0])

    def _hand_to_idle_standby(self, job: InferenceJob) -> bool:
        """Queue `job` if a standby is idle and not yet handed a frame; else False."""
        with self._lock:
            if self._closing or self._idle_standbys <= len(self._jobs):
                return False
            job.future = Future()
            self._jobs.append(job)
            self._overdue.notify()
            return True

    def submit(self, job: InferenceJob) -> Future:
        with self._lock:
            if self._closing:
                raise RuntimeError("inference workers are closed")
            job.future = Future()
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
                    self._idle_standbys += 1
                    self._overdue.wait()
                    self._idle_standbys -= 1
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
                images.append(job.decode())
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
