"""The in-process limit: decode + preprocess + onnxruntime in a loop, no HTTP.

This is the ceiling a server can approach: the same per-frame work as `scrapvision serve`
(`decode_frame` then `Engine.predict`) without any transport. It runs in a layout of
P worker processes x T onnxruntime threads; on small CPUs several single-thread processes
beat one process with several threads, so compare layouts and take the best.

    python -m bench.inprocess --layout 2x1 --layout 1x2 --seconds 5
    python -m bench.inprocess --frames bench/out/frames/1280x720 --no-reduced-decode
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

from bench.common import (
    FRAMES,
    append_json,
    default_model,
    latency_summary,
    load_frames,
    parse_cpus,
    pin_to,
)
from scrapvision.decode import decode_frame
from scrapvision.engine import Engine

WARMUP_ITERATIONS = 5


@dataclass(frozen=True)
class Layout:
    processes: int
    threads: int

    def __str__(self) -> str:
        return f"{self.processes}x{self.threads}"

    @classmethod
    def parse(cls, text: str) -> "Layout":
        """'2x1' = two processes with one onnxruntime thread each."""
        processes, _, threads = text.lower().partition("x")
        try:
            layout = cls(int(processes), int(threads))
        except ValueError:
            raise argparse.ArgumentTypeError(f"layout must look like 2x1, got {text!r}") from None
        if layout.processes < 1 or layout.threads < 1:
            raise argparse.ArgumentTypeError(f"layout {text!r} needs at least 1x1")
        return layout


@dataclass(frozen=True)
class Job:
    """What every worker of one measurement does."""

    model: Path
    frames_dir: Path
    threads: int
    batch: int
    reduced_decode: bool
    seconds: float
    cpus: frozenset[int] | None
    max_frames: int | None


def full_size_decode() -> Any:
    """Context in which `decode_frame` decodes JPEGs at full size (the 'off' variant)."""
    return mock.patch("scrapvision.decode.reduction_factor", return_value=1)


def _worker(job: Job, commands: Any, start: Any, results: Any) -> None:
    """Load the model and frames once, then measure for as many seconds as each command says."""
    pin_to(set(job.cpus) if job.cpus else None)
    engine = Engine(job.model, threads=job.threads)
    frames = load_frames(job.frames_dir, job.max_frames)
    size, colour = engine.input_size, engine.info.colour_order
    decode_context = nullcontext() if job.reduced_decode else full_size_decode()

    def step(index: int) -> None:
        chunk = [frames[(index + i) % len(frames)] for i in range(job.batch)]
        engine.predict(np.stack([decode_frame(data, size, colour) for data in chunk]))

    with decode_context:
        for i in range(WARMUP_ITERATIONS):
            step(i)
        while (seconds := commands.get()) is not None:
            start.wait()
            done, latencies = 0, []
            began = time.perf_counter()
            deadline = began + seconds
            now = began
            while now < deadline:
                step(done)
                done += job.batch
                previous, now = now, time.perf_counter()
                latencies.append((now - previous) * 1000)
            results.put({"frames": done, "elapsed": now - began, "latencies": latencies})


class InprocessPool:
    """`processes` workers running `job`, started once and measured on request.

    Between measurements the workers wait on a queue and use no CPU, so the limit can be
    measured in short slices between a server's, seconds apart: this machine's speed drifts
    by 10-30% between minutes, and a ratio is only as good as the closeness of its parts.
    """

    def __init__(self, job: Job, processes: int) -> None:
        self.job, self.processes = job, processes
        ctx = mp.get_context("spawn")  # onnxruntime and OpenCV threads do not survive fork
        self._commands, self._results = ctx.Queue(), ctx.Queue()
        self._start = ctx.Barrier(processes)
        self._workers = [ctx.Process(target=_worker, daemon=True,
                                     args=(job, self._commands, self._start, self._results))
                         for _ in range(processes)]

    def __enter__(self) -> "InprocessPool":
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        for _ in self._workers:
            self._commands.put(None)
        for worker in self._workers:
            worker.join(timeout=30 if exc_type is None else 0)  # after a failure some wait
            if worker.is_alive():                                # at the barrier forever
                worker.kill()
                worker.join()

    def measure(self, seconds: float) -> dict[str, Any]:
        """All workers at once for `seconds`; frames/s summed over them."""
        for _ in self._workers:
            self._commands.put(seconds)
        reports: list[dict[str, Any]] = []
        give_up = time.monotonic() + seconds + 120  # model load and warm-up included
        while len(reports) < len(self._workers):
            try:
                reports.append(self._results.get(timeout=1.0))
            except queue.Empty:
                failed = [w.exitcode for w in self._workers if w.exitcode]
                if failed or time.monotonic() > give_up:
                    raise RuntimeError(f"in-process worker failed (exit codes {failed}) or "
                                       "gave no result") from None
        job = self.job
        return {
            "layout": f"{self.processes}x{job.threads}",
            "batch": job.batch,
            "reduced_decode": job.reduced_decode,
            "frame_set": job.frames_dir.name,
            "frames": sum(r["frames"] for r in reports),
            "fps": sum(r["frames"] / r["elapsed"] for r in reports),
            # time of one step (decode + infer of `batch` frames) in one worker
            **latency_summary([x for r in reports for x in r["latencies"]]),
        }


def measure(job: Job, processes: int) -> dict[str, Any]:
    """Start `processes` workers on `job` and measure them once for `job.seconds`."""
    with InprocessPool(job, processes) as pool:
        return pool.measure(job.seconds)


def copy_cost_us(frames: list[bytes], repeats: int = 20) -> float:
    """Microseconds one extra copy of a frame body costs (what zero-copy reading saves)."""
    began = time.perf_counter()
    for _ in range(repeats):
        for data in frames:
            bytearray(data)
    return (time.perf_counter() - began) / (repeats * len(frames)) * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None,
                        help="ONNX model (default: shipped ewaste model, else the stand-in)")
    parser.add_argument("--frames", type=Path, default=FRAMES / "640x480")
    parser.add_argument("--layout", type=Layout.parse, action="append",
                        help="PROCESSESxTHREADS, repeatable (default 2x1)")
    parser.add_argument("--batch", type=int, default=1, help="frames per onnxruntime call")
    parser.add_argument("--no-reduced-decode", dest="reduced_decode", action="store_false",
                        help="decode JPEGs at full size (to measure what reduced decode saves)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured time per layout")
    parser.add_argument("--max-frames", type=int, default=None, help="use only the first N frames")
    parser.add_argument("--cpus", default=None, help="pin workers to these CPUs, e.g. 0 or 0-1")
    parser.add_argument("--json", type=Path, default=None, help="append results as JSON lines")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.seconds <= 0:
        parser.error("--batch must be >= 1 and --seconds > 0")
    model = args.model or default_model()
    if not model.is_file():
        parser.error(f"no model at {model}: pass --model or run `python -m bench.standin`")
    cpus = parse_cpus(args.cpus)
    for layout in args.layout or [Layout(2, 1)]:
        job = Job(model, args.frames, layout.threads, args.batch, args.reduced_decode,
                  args.seconds, frozenset(cpus) if cpus else None, args.max_frames)
        result = measure(job, layout.processes)
        print(f"in-process {result['layout']} batch {job.batch} "
              f"reduced_decode={job.reduced_decode} {result['frame_set']}: "
              f"{result['fps']:.1f} frames/s (step p50 {result['p50_ms']:.2f} ms)")
        append_json(args.json, {"bench": "inprocess", "model": str(model), **result})


if __name__ == "__main__":
    main()
