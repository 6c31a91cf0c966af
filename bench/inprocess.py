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


def _worker(job: Job, start: Any, results: Any) -> None:
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
        start.wait()
        done, latencies = 0, []
        began = time.perf_counter()
        deadline = began + job.seconds
        now = began
        while now < deadline:
            step(done)
            done += job.batch
            previous, now = now, time.perf_counter()
            latencies.append((now - previous) * 1000)
    results.put({"frames": done, "elapsed": now - began, "latencies": latencies})


def measure(job: Job, processes: int) -> dict[str, Any]:
    """Run `processes` workers on `job` at the same time; frames/s summed over them."""
    ctx = mp.get_context("spawn")  # onnxruntime and OpenCV threads do not survive fork
    start, results = ctx.Barrier(processes), ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(job, start, results)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    reports = [results.get(timeout=job.seconds + 120) for _ in workers]
    for worker in workers:
        worker.join()
        if worker.exitcode:
            raise RuntimeError(f"in-process worker failed with exit code {worker.exitcode}")
    frames = sum(r["frames"] for r in reports)
    return {
        "layout": f"{processes}x{job.threads}",
        "batch": job.batch,
        "reduced_decode": job.reduced_decode,
        "frame_set": job.frames_dir.name,
        "frames": frames,
        "fps": sum(r["frames"] / r["elapsed"] for r in reports),
        # time of one step (decode + infer of `batch` frames) in one worker
        **latency_summary([x for r in reports for x in r["latencies"]]),
    }


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
