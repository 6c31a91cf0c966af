"""Run every contender on the same frames in one go and write `bench/RESULTS.md`.

1. the in-process limit (`bench.inprocess`) in several layouts, with and without
   reduced-size JPEG decode and with micro-batches;
2. `scrapvision serve` (its default layout, then alternatives): time to ready, RSS of its
   process tree, HTTP and WebSocket at 1, 4 and 16 streams, and the deadline scenario
   (4 lines x 15 frames/s, 80 ms); then slices of HTTP and WS at 16 streams, each between
   two slices of the in-process limit, so each target ratio is a median over slices whose
   parts are seconds apart;
3. the naive baseline (`bench.naive_service`) at the same stream counts;
4. int8 static quantisation (`bench.quantize`) when labelled data for the model is given.

Servers and in-process workers run on the "server" CPUs, the load generator (this
process) on the "client" CPUs: disjoint when there are at least 4 CPUs (or `--pin split`),
otherwise shared, and the client's own CPU use is reported next to every number.

    python -m bench.run_all                      # full run, about 10 minutes on 2 cores
    python -m bench.run_all --quick              # a few seconds: checks everything runs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil
import uvloop
import yaml

from bench import report
from bench.common import (
    FRAMES,
    OUT,
    REPO,
    default_model,
    load_frames,
    machine_info,
    pin_to,
    size_name,
)
from bench.inprocess import InprocessPool, Job, Layout, copy_cost_us, measure
from bench.load import run_load
from scrapvision.engine import Engine
from scrapvision.modelmeta import ModelInfo
from scrapvision.settings import Settings

DEADLINE_LINES = ("line1", "line2", "line3", "line4")
THROUGHPUT_LINE = "bench"
# Closed-loop streams are not cameras: N streams keep N frames queued by design, so the
# throughput line gets room for all of them and a deadline that measures capacity rather
# than dropping queued frames as late. The deadline lines keep the service defaults.
THROUGHPUT_DEADLINE_MS = 1000.0


@dataclass(frozen=True)
class ServeLayout:
    """How `scrapvision serve` runs inference: worker processes, each with one onnxruntime
    session of `ort_threads` threads, used on the event loop (`inference` "loop", with
    `inference_threads` standing by) or by `inference_threads` threads."""

    workers: int
    ort_threads: int
    inference: str = "loop"
    inference_threads: int = 1

    def __str__(self) -> str:
        label = f"{self.workers}x{self.ort_threads}"
        if self.inference == "loop":
            return f"{label} (on the event loop)"
        plural = "s" if self.inference_threads > 1 else ""
        return f"{label} ({self.inference_threads} inference thread{plural})"


@dataclass(frozen=True)
class Plan:
    """How long and how wide each part runs."""

    load_seconds: float = 8.0
    warmup_seconds: float = 1.0  # per load run, after one answered frame per stream
    inprocess_seconds: float = 6.0
    deadline_seconds: float = 45.0  # 2,700 frames per transport: 99.9% allows 2 misses
    deadline_rate: float = 15.0
    deadline_ms: float = 80.0
    streams: tuple[int, ...] = (1, 4, 16)
    frame_sets: tuple[str, ...] = tuple(size_name(w, h) for w, h in ((640, 480), (1280, 720)))
    max_frames: int | None = None
    layouts: tuple[tuple[int, int], ...] = ((2, 1), (1, 2), (1, 1))  # in-process P x T
    # the service's default layout gets the full treatment, then the alternatives
    serve_layouts: tuple[ServeLayout, ...] = (
        ServeLayout(2, 1), ServeLayout(2, 1, "threads", 2), ServeLayout(1, 2),
        ServeLayout(1, 1, "threads", 2))
    batches: tuple[int, ...] = (8,)
    # HTTP and WS slices at the most streams, this many of each, every one between two
    # slices of the in-process limit: each target ratio is the median of the slices' ratios,
    # since the machine's speed drifts by 10-30% between minutes
    ratio_rounds: int = 5
    ratio_slice_seconds: float = 4.0
    limit_slice_seconds: float = 3.0
    naive: bool = True


QUICK = Plan(load_seconds=0.5, warmup_seconds=0.2, inprocess_seconds=0.5, deadline_seconds=1.0,
             streams=(1, 2), frame_sets=("640x480",), max_frames=5, layouts=((1, 1),),
             serve_layouts=(ServeLayout(1, 1),), batches=(2,),
             ratio_rounds=1, ratio_slice_seconds=0.3, limit_slice_seconds=0.3)


@dataclass
class Cpus:
    server: set[int]
    client: set[int]
    how: str


def allocate_cpus(pin: str) -> Cpus:
    """Disjoint server / client CPU sets where there are enough CPUs (or when forced)."""
    cpus = sorted(os.sched_getaffinity(0))
    if pin == "split" or (pin == "auto" and len(cpus) >= 4):
        if len(cpus) < 2:
            raise SystemExit("--pin split needs at least 2 CPUs")
        server, client = set(cpus[:-1]), {cpus[-1]}
        return Cpus(server, client, f"servers and in-process workers pinned to CPUs "
                    f"{_cpu_list(server)}, load generator to CPU {_cpu_list(client)} "
                    "(sched_setaffinity, as taskset -c)")
    return Cpus(set(cpus), set(cpus), f"not pinned: {len(cpus)} CPUs are too few to split "
                "without halving the server, so servers, in-process workers and the load "
                "generator share CPUs " + _cpu_list(set(cpus)) + "; the load generator's own "
                "CPU use is reported with every number")


def default_first(layouts: tuple[ServeLayout, ...]) -> list[ServeLayout]:
    """`scrapvision serve`'s default layout (from its settings), then the other `layouts`."""
    fields = Settings.model_fields
    default = ServeLayout(fields["workers"].default, fields["ort_threads"].default,
                          fields["inference"].default, fields["inference_threads"].default)
    return [default, *(layout for layout in layouts if layout != default)]


def _slug(layout: ServeLayout) -> str:
    return f"{layout.workers}x{layout.ort_threads}-{layout.inference}{layout.inference_threads}"


def _cpu_list(cpus: set[int]) -> str:
    return ",".join(map(str, sorted(cpus)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A server process tree started for the benchmark."""

    process: subprocess.Popen[bytes]
    url: str
    ready_s: float = 0.0
    rss_mb: float = 0.0  # largest sum over the process tree seen so far
    pss_mb: float = 0.0  # the same without double-counting shared pages
    log: Path = field(default_factory=Path)

    def connection_spread(self) -> list[int]:
        """Established client connections held by each server process, most first: shows
        whether the kernel spread the streams over the worker processes."""
        port = int(self.url.rsplit(":", 1)[1])
        try:
            root = psutil.Process(self.process.pid)
            counts = [sum(c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port
                          for c in p.net_connections(kind="tcp"))
                      for p in (root, *root.children(recursive=True))]
        except psutil.Error:
            return []
        return sorted((c for c in counts if c), reverse=True)

    def sample_memory(self) -> None:
        try:
            root = psutil.Process(self.process.pid)
            tree = [root, *root.children(recursive=True)]
            infos = [p.memory_full_info() for p in tree]
        except psutil.Error:
            return
        self.rss_mb = max(self.rss_mb, sum(i.rss for i in infos) / 2**20)
        self.pss_mb = max(self.pss_mb, sum(getattr(i, "pss", i.rss) for i in infos) / 2**20)


@contextmanager
def started(command: list[str], ready_path: str, port: int, cpus: set[int], log: Path,
            env: dict[str, str] | None = None, timeout: float = 120.0) -> Iterator[Server]:
    """Start a server on `cpus`, wait until `ready_path` answers 200, stop it afterwards."""
    url = f"http://127.0.0.1:{port}"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as output:
        began = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=output,
                                   stderr=subprocess.STDOUT,
                                   preexec_fn=lambda: os.sched_setaffinity(0, cpus))
        server = Server(process, url, log=log)
        try:
            server.ready_s = _wait_ready(server, url + ready_path, began, timeout)
            server.sample_memory()
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_ready(server: Server, url: str, began: float, timeout: float) -> float:
    while time.perf_counter() - began < timeout:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode} before it was "
                               f"ready; see {server.log}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return time.perf_counter() - began
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.02)
    raise RuntimeError(f"server not ready after {timeout} s; see {server.log}")


def bench_registry(model: Path, root: Path) -> ModelInfo:
    """A models/ folder holding just `model` (and its card) as version v1 of its name."""
    info = Engine(model).info
    shutil.rmtree(root, ignore_errors=True)
    target = root / info.name / "v1"
    target.mkdir(parents=True)
    shutil.copy2(model, target / "model.onnx")
    if (model.parent / "card.json").is_file():
        shutil.copy2(model.parent / "card.json", target / "card.json")
    return info


def serve_config(folder: Path, registry: Path, model_name: str, port: int, layout: ServeLayout,
                 deadline_ms: float, max_streams: int) -> Path:
    """Service settings for the bench: one throughput line plus the deadline-scenario lines."""
    data = folder / "data"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    lines = {THROUGHPUT_LINE: {"model": model_name, "deadline_ms": THROUGHPUT_DEADLINE_MS,
                               "max_in_flight": max_streams}}
    lines |= {name: {"model": model_name, "deadline_ms": deadline_ms} for name in DEADLINE_LINES}
    settings = {
        "port": port, "workers": layout.workers, "ort_threads": layout.ort_threads,
        "inference": layout.inference, "inference_threads": layout.inference_threads,
        "models_dir": str(registry), "lines": lines,
        "audit": {"url": f"sqlite:///{data / 'audit.db'}", "frames_dir": str(data / "frames")},
        "log_level": "warning",
    }
    path = folder / f"serve-{_slug(layout)}.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


class Runner:
    """Holds what every part shares: plan, CPUs, model, frames, and the results so far."""

    def __init__(self, plan: Plan, cpus: Cpus, model: Path, frames_root: Path,
                 out: Path) -> None:
        self.plan, self.cpus, self.model, self.frames_root = plan, cpus, model, frames_root
        self.out = out
        self.frames = {name: load_frames(frames_root / name, plan.max_frames)
                       for name in plan.frame_sets}
        self.registry = out / "registry"
        self.info = bench_registry(model, self.registry)

    def inprocess_job(self, frame_set: str, threads: int, batch: int = 1,
                      reduced: bool = True) -> Job:
        plan = self.plan
        return Job(self.model, self.frames_root / frame_set, threads, batch, reduced,
                   plan.inprocess_seconds, frozenset(self.cpus.server), plan.max_frames)

    def inprocess(self) -> list[dict[str, Any]]:
        plan, results = self.plan, []
        variants = [(p, t, 1, True) for p, t in plan.layouts]
        first_p, first_t = plan.layouts[0]  # the serving default: the other options vary it
        variants += [(first_p, first_t, 1, False)]  # reduced-size decode off
        variants += [(p, t, b, True) for b in plan.batches for p, t in plan.layouts[:2]]
        for frame_set in plan.frame_sets:
            for processes, threads, batch, reduced in variants:
                job = self.inprocess_job(frame_set, threads, batch, reduced)
                results.append(measure(job, processes))
                _progress("in-process", results[-1])
        return results

    def load(self, server: Server, transport: str, lines: list[str], streams: int,
             frame_set: str, seconds: float, rate: float | None = None,
             deadline_ms: float | None = None) -> dict[str, Any]:
        pin_to(self.cpus.client)
        spread: list[list[int]] = []
        probe = threading.Timer(self.plan.warmup_seconds + seconds / 2,
                                lambda: spread.append(server.connection_spread()))
        probe.start()
        result = uvloop.run(run_load(server.url, transport, lines, streams,
                                     self.frames[frame_set], seconds, self.plan.warmup_seconds,
                                     rate, deadline_ms))
        probe.join()
        server.sample_memory()
        result["frame_set"] = frame_set
        result["connections"] = spread[0] if spread else []
        _progress(transport, result)
        return result

    def serve(self, layout: ServeLayout, full: bool,
              limits: dict[str, Layout] | None = None) -> dict[str, Any]:
        """Start `scrapvision serve` in one layout and load it (all of it when `full`, then
        the ratio rounds against the in-process `limits` layouts per frame set)."""
        plan, port = self.plan, free_port()
        folder = self.out / "serve"
        config = serve_config(folder, self.registry, self.info.name, port, layout,
                              plan.deadline_ms, max(plan.streams))
        command = [sys.executable, "-m", "scrapvision", "serve", "--config", str(config)]
        loads, deadline, rounds = [], [], []
        with started(command, "/readyz", port, self.cpus.server,
                     folder / f"serve-{_slug(layout)}.log") as server:
            streams = plan.streams if full else plan.streams[-1:]
            frame_sets = plan.frame_sets if full else plan.frame_sets[:1]
            for frame_set in frame_sets:
                for transport in ("http", "ws"):
                    for count in streams:
                        loads.append(self.load(server, transport, [THROUGHPUT_LINE], count,
                                               frame_set, plan.load_seconds))
            if full:
                for transport in ("ws", "http"):
                    deadline.append(self.load(
                        server, transport, list(DEADLINE_LINES), len(DEADLINE_LINES),
                        plan.frame_sets[0], plan.deadline_seconds, rate=plan.deadline_rate,
                        deadline_ms=plan.deadline_ms))
                for frame_set, limit in (limits or {}).items():
                    rounds += self.ratio_rounds(server, frame_set, limit)
        return {"layout": str(layout), "ready_s": server.ready_s,
                "rss_mb": server.rss_mb, "pss_mb": server.pss_mb, "loads": loads,
                "deadline": deadline, "ratio_rounds": rounds}

    def ratio_rounds(self, server: Server, frame_set: str,
                     limit: Layout) -> list[dict[str, Any]]:
        """HTTP and WS slices at the most streams, each between two slices of the in-process
        limit (the server idle meanwhile): every slice's ratio has its parts seconds apart."""
        plan, streams = self.plan, max(self.plan.streams)
        rounds = []
        with InprocessPool(self.inprocess_job(frame_set, limit.threads), limit.processes) as pool:
            before = pool.measure(plan.limit_slice_seconds)["fps"]
            for index in range(plan.ratio_rounds):
                for transport in ("http", "ws") if index % 2 == 0 else ("ws", "http"):
                    fps = self.load(server, transport, [THROUGHPUT_LINE], streams, frame_set,
                                    plan.ratio_slice_seconds)["fps"]
                    after = pool.measure(plan.limit_slice_seconds)["fps"]
                    rounds.append({"frame_set": frame_set, "layout": str(limit),
                                   "transport": transport, "fps": fps,
                                   "limit_before": before, "limit_after": after})
                    before = after
        limits = ", ".join(f"{r['limit_after']:.0f}" for r in rounds)
        print(f"  in-process {limit} between them: {limits} frames/s", flush=True)
        return rounds

    def naive(self) -> dict[str, Any]:
        port = free_port()
        command = [sys.executable, "-m", "bench.naive_service", "--model", str(self.model),
                   "--port", str(port)]
        # the tutorial runs with PyTorch's default threads, whatever this shell has set
        env = {k: v for k, v in os.environ.items()
               if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        loads = []
        with started(command, "/healthz", port, self.cpus.server, self.out / "naive.log",
                     env=env) as server:
            for frame_set in self.plan.frame_sets:
                for count in self.plan.streams:
                    loads.append(self.load(server, "naive", [THROUGHPUT_LINE], count,
                                           frame_set, self.plan.load_seconds))
        return {"ready_s": server.ready_s, "rss_mb": server.rss_mb, "pss_mb": server.pss_mb,
                "loads": loads}


def _progress(what: str, result: dict[str, Any]) -> None:
    detail = result.get("layout") or f"x{result['streams']}"
    if result.get("rate"):
        detail += f" at {result['rate']:g}/s, in time {result['in_time_share']:.2%}"
    print(f"  {what} {detail} {result['frame_set']}: {result['fps']:.1f} frames/s", flush=True)


def other_load() -> dict[str, Any]:
    """How busy the machine is before we start, and whether a training job is running."""
    busy = psutil.cpu_percent(interval=1.0)
    training = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "scrapvision train" in cmdline or "scrapvision retrain" in cmdline:
            training.append(cmdline)
    return {"cpu_busy_percent_before": busy, "training_jobs": training}


def ensure_frames(frames_root: Path, plan: Plan) -> None:
    missing = [name for name in plan.frame_sets
               if not (frames_root / name).is_dir() or not any((frames_root / name).iterdir())]
    if missing:
        from bench.make_frames import main as make_frames  # noqa: PLC0415

        print(f"making frames {missing} in {frames_root}")
        make_frames(["--out", str(frames_root), *[a for m in missing for a in ("--size", m)]])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None,
                        help="ONNX model (default: shipped ewaste model, else the stand-in)")
    parser.add_argument("--frames", type=Path, default=FRAMES,
                        help="folder with one subfolder of JPEGs per frame size")
    parser.add_argument("--quantize-data", type=Path, default=None,
                        help="ImageFolder root with split.csv of the model's classes: "
                        "also measure int8 static quantisation")
    parser.add_argument("--pin", choices=("auto", "split", "none"), default="auto")
    parser.add_argument("--quick", action="store_true", help="tiny run that checks it all works")
    parser.add_argument("--no-naive", dest="naive", action="store_false",
                        help="skip the naive baseline (needs torch + timm)")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "RESULTS.md")
    parser.add_argument("--out", type=Path, default=OUT,
                        help="scratch folder: bench registry, server configs and logs, raw results")
    args = parser.parse_args(argv)
    plan = replace(QUICK if args.quick else Plan(), naive=args.naive)
    model = args.model or default_model()
    if not model.is_file():
        parser.error(f"no model at {model}: pass --model or run `python -m bench.standin`")
    ensure_frames(args.frames, plan)
    before = other_load()
    cpus = allocate_cpus(args.pin)
    runner = Runner(plan, cpus, model, args.frames, args.out)
    results: dict[str, Any] = {
        "machine": machine_info(), "before": before, "pinning": cpus.how,
        "plan": asdict(plan), "model": {"path": str(model), **runner.info.model_dump(
            include={"name", "version", "architecture", "class_names", "input_size",
                     "quantization"})},
        "frames": {name: len(frames) for name, frames in runner.frames.items()},
        "throughput_line": {"deadline_ms": THROUGHPUT_DEADLINE_MS,
                            "max_in_flight": max(plan.streams)},
    }
    print("in-process limit")
    results["inprocess"] = runner.inprocess()
    results["copy_cost_us"] = copy_cost_us(runner.frames[plan.frame_sets[-1]])
    if args.quantize_data:
        from bench.quantize import compare  # noqa: PLC0415

        print("int8 static quantisation")
        results["quantize"] = compare(model, args.quantize_data,
                                      args.quantize_data / "split.csv",
                                      args.out / "int8" / "model.int8.onnx",
                                      50 if args.quick else 200,
                                      args.frames / plan.frame_sets[0], plan.inprocess_seconds)
    results["serve"] = []
    limits = {frame_set: Layout.parse(limit["layout"]) for frame_set in plan.frame_sets
              if (limit := report.inprocess_limit(results, frame_set))}
    for index, layout in enumerate(default_first(plan.serve_layouts)):
        print(f"scrapvision serve {layout}")
        results["serve"].append(runner.serve(layout, full=index == 0, limits=limits))
    if plan.naive:
        print("naive baseline")
        results["naive"] = runner.naive()
    results["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    raw = args.out / "results.json"
    raw.write_text(json.dumps(results, indent=1))
    args.results.write_text(report.render(results))
    print(f"results -> {args.results} (raw: {raw})")


if __name__ == "__main__":
    main()
