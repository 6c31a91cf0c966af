"""Soak: `scrapvision serve` under a steady camera load for a long time.

Starts the service (its default 2-worker layout, real SQLite audit store) and drives
camera streams spread over four lines, by default fixed-rate cameras over WebSocket as a
sorting line sends them. Every `--sample-s` seconds it records, for the server's whole
process tree, RSS, open file descriptors and threads, and for the frames sent in that
window, frames/s and latency percentiles. At the end it reads the audit store's counters.

It fails (exit 1) when RSS grew more than `--max-rss-growth-mb` or descriptors more than
`--max-fd-growth` between the end of the warm-up and the end of the run, when any frame
errored, or when the audit store lost records: a leak shows up as steady growth, which a
long enough run turns into a number larger than the noise.

    python -m bench.soak                          # 10 minutes, 4 streams x 15 frames/s
    python -m bench.soak --seconds 180 --rate 10  # shorter, lighter
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
import uvloop

from bench.common import FRAMES, OUT, default_model, latency_summary, load_frames, machine_info
from bench.load import TRANSPORTS, Outcome, Stream, Tally, closed_loop, fixed_rate, send_and_wait
from bench.run_all import (
    DEADLINE_LINES,
    ServeLayout,
    bench_registry,
    free_port,
    serve_config,
    started,
)

WARMUP_SHARE = 0.1  # growth is measured from the end of the first tenth of the run
SETTLE_S = 1.0  # a window is summed this long after it closes, so its answers are in


@dataclass(slots=True)
class Sample:
    """The server's resources at `t_s` and the frames sent in the window ending there."""

    t_s: float
    rss_mb: float
    fds: int
    threads: int
    sent: int
    decided: int
    late: int
    overload: int
    errors: int
    fps: float
    p50_ms: float
    p99_ms: float


def process_tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def resources(pid: int) -> tuple[float, int, int]:
    """(RSS MB, open file descriptors, threads) summed over the process tree."""
    rss = fds = threads = 0
    for process in process_tree(pid):
        try:
            rss += process.memory_info().rss
            fds += process.num_fds()
            threads += process.num_threads()
        except psutil.NoSuchProcess:  # a worker restarting: counted at the next sample
            continue
    return rss / 2**20, fds, threads


def window_sample(t_s: float, outcomes: list[Outcome], seconds: float, pid: int) -> Sample:
    decided = [o for o in outcomes if o.status == "decided"]
    latency = latency_summary([o.latency_ms for o in decided])
    rss_mb, fds, threads = resources(pid)
    return Sample(
        t_s=round(t_s, 1), rss_mb=round(rss_mb, 1), fds=fds, threads=threads,
        sent=len(outcomes), decided=len(decided),
        late=sum(o.status == "late" for o in outcomes),
        overload=sum(o.status == "overload" for o in outcomes),
        errors=sum(o.status == "error" for o in outcomes),
        fps=round(len(decided) / seconds, 2),
        p50_ms=round(latency["p50_ms"], 2), p99_ms=round(latency["p99_ms"], 2),
    )


async def sample_windows(pid: int, tally: Tally, sample_s: float) -> list[Sample]:
    """One Sample per `sample_s` window of the tally, taken as each window closes."""
    samples: list[Sample] = []
    window_start = tally.window_start
    while window_start < tally.window_end:
        window_end = min(window_start + sample_s, tally.window_end)
        await asyncio.sleep(max(0.0, window_end + SETTLE_S - time.perf_counter()))
        in_window = [o for o in tally.outcomes if window_start <= o.sent < window_end]
        samples.append(await asyncio.to_thread(
            window_sample, window_end - tally.window_start, in_window,
            window_end - window_start, pid))
        window_start = window_end
    return samples


async def drive(url: str, pid: int, transport: str, lines: list[str], streams: int,
                frames: list[bytes], seconds: float, rate: float | None,
                deadline_ms: float, sample_s: float) -> list[Sample]:
    """Run the cameras for `seconds` and sample the server while they run."""
    cameras = [Stream(url, transport, lines[i % len(lines)], f"s{i}", deadline_ms)
               for i in range(streams)]
    await asyncio.gather(*(camera.open() for camera in cameras))
    try:
        await asyncio.gather(*(send_and_wait(camera, frames[0]) for camera in cameras))
        start = time.perf_counter()
        tally = Tally(start, start + seconds)
        sampler = asyncio.create_task(sample_windows(pid, tally, sample_s))
        await asyncio.gather(*(
            closed_loop(camera, frames, i * len(frames) // streams, tally) if rate is None
            else fixed_rate(camera, frames, i * len(frames) // streams, tally, rate,
                            phase=i / streams)
            for i, camera in enumerate(cameras)))
        samples = await sampler
    finally:
        await asyncio.gather(*(camera.close() for camera in cameras))
    return samples


def audit_stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/v1/audit/stats", timeout=30) as response:
        return json.load(response)


def summarise(samples: list[Sample], audit: dict[str, Any]) -> dict[str, Any]:
    """Growth from the end of the warm-up to the end, latency by halves, totals."""
    base = samples[min(len(samples) - 1, int(len(samples) * WARMUP_SHARE))]
    last = samples[-1]
    half = len(samples) // 2
    first_half, second_half = samples[:half] or samples, samples[half:]
    return {
        "rss_mb_after_warmup": base.rss_mb, "rss_mb_end": last.rss_mb,
        "rss_growth_mb": round(last.rss_mb - base.rss_mb, 1),
        "rss_mb_max": max(s.rss_mb for s in samples),
        "fds_after_warmup": base.fds, "fds_end": last.fds, "fd_growth": last.fds - base.fds,
        "threads_end": last.threads, "threads_max": max(s.threads for s in samples),
        "p50_ms_first_half": _median(s.p50_ms for s in first_half),
        "p50_ms_second_half": _median(s.p50_ms for s in second_half),
        "p99_ms_worst_window": max(s.p99_ms for s in samples if s.decided) if any(
            s.decided for s in samples) else None,
        "p99_ms_median_window": _median(s.p99_ms for s in samples if s.decided),
        "fps_mean": round(sum(s.fps for s in samples) / len(samples), 2),
        **{key: sum(getattr(s, key) for s in samples)
           for key in ("sent", "decided", "late", "overload", "errors")},
        "audit_written": audit.get("written"), "audit_dropped_full": audit.get("dropped_full"),
        "audit_rejected": audit.get("rejected"), "audit_write_errors": audit.get("write_errors"),
        "audit_buffered": audit.get("buffered"),
    }


def _median(values: Any) -> float | None:
    ordered = sorted(v for v in values if v == v)  # NaN-free
    return ordered[len(ordered) // 2] if ordered else None


def problems(summary: dict[str, Any], max_rss_growth_mb: float, max_fd_growth: int) -> list[str]:
    """What makes the soak fail; empty when it passed."""
    found = []
    if summary["rss_growth_mb"] > max_rss_growth_mb:
        found.append(f"RSS grew {summary['rss_growth_mb']} MB (> {max_rss_growth_mb})")
    if summary["fd_growth"] > max_fd_growth:
        found.append(f"file descriptors grew by {summary['fd_growth']} (> {max_fd_growth})")
    if summary["errors"]:
        found.append(f"{summary['errors']} frames errored")
    if summary["audit_dropped_full"] or summary["audit_rejected"]:
        found.append(f"audit store dropped {summary['audit_dropped_full']} and rejected "
                     f"{summary['audit_rejected']} records")
    return found


def print_table(samples: list[Sample]) -> None:
    columns = list(asdict(samples[0]))
    print(" ".join(f"{c:>9}" for c in columns))
    for sample in samples:
        print(" ".join(f"{v:>9}" for v in asdict(sample).values()))


def soak(args: argparse.Namespace) -> dict[str, Any]:
    """Start the service, soak it, stop it; the full report."""
    folder = args.out.parent / "soak"
    info = bench_registry(args.model, folder / "models")
    port = free_port()
    config = serve_config(folder, folder / "models", info.name, port,
                          ServeLayout(workers=args.workers, ort_threads=1), args.deadline_ms,
                          args.streams)
    command = [sys.executable, "-m", "scrapvision", "serve", "--config", str(config)]
    frames = load_frames(args.frames, limit=64)
    rate = args.rate or None
    with started(command, "/readyz", port, os.sched_getaffinity(0),
                 folder / "serve.log") as server:
        samples = uvloop.run(drive(server.url, server.process.pid, args.transport,
                                   list(DEADLINE_LINES), args.streams, frames, args.seconds,
                                   rate, args.deadline_ms, args.sample_s))
        audit = audit_stats(server.url)
    summary = summarise(samples, audit)
    return {"machine": machine_info(), "model": str(args.model), "transport": args.transport,
            "streams": args.streams, "rate": rate, "seconds": args.seconds,
            "workers": args.workers, "deadline_ms": args.deadline_ms,
            "summary": summary, "samples": [asdict(s) for s in samples]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--rate", type=float, default=15.0,
                        help="frames/s per stream; 0 = closed loop (as fast as answered)")
    parser.add_argument("--transport", choices=TRANSPORTS[:2], default="ws")
    parser.add_argument("--deadline-ms", type=float, default=80.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--model", type=Path, default=None,
                        help="ONNX model (default: the shipped ewaste model or the stand-in)")
    parser.add_argument("--frames", type=Path, default=FRAMES / "640x480")
    parser.add_argument("--out", type=Path, default=OUT / "soak.json")
    parser.add_argument("--max-rss-growth-mb", type=float, default=50.0)
    parser.add_argument("--max-fd-growth", type=int, default=10)
    args = parser.parse_args(argv)
    args.model = args.model or default_model()
    if args.seconds < 2 * args.sample_s:
        parser.error("--seconds must cover at least two --sample-s windows")
    report = soak(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print_table([Sample(**s) for s in report["samples"]])
    print(json.dumps(report["summary"], indent=2))
    found = problems(report["summary"], args.max_rss_growth_mb, args.max_fd_growth)
    for problem in found:
        print(f"SOAK FAILED: {problem}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
