"""Server CPU per frame outside decode and inference: what HTTP or WebSocket, routing, policy,
records, audit and metrics cost the service once the model's own work is taken out.

Two servers take turns, each pinned to one CPU while the load generator runs on another:
- `scrapvision serve` with one worker whose frame decode and onnxruntime call return
  constants (patched in its process before uvicorn starts; everything else is the real
  service: audit store, tallies, metrics, policy);
- the floor: a bare uvicorn ASGI app that reads each frame and answers fixed JSON.

The figure is the server process's CPU time (every thread) over the measured window divided by
the frames answered in it. On 2 cores a real frame's decode + inference takes about 5 ms, so
every 50 us here is about one point of the ratio to the in-process limit (bench/RESULTS.md).

    python -m bench.overhead                      # HTTP and WS, 16 streams, 3 rounds each
    python -m bench.overhead --transport ws --rounds 5 --seconds 6
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psutil
import uvloop

from bench.common import FRAMES, OUT, default_model, load_frames, pin_to
from bench.load import run_load
from bench.run_all import (
    THROUGHPUT_LINE,
    ServeLayout,
    bench_registry,
    free_port,
    serve_config,
    started,
)

SERVERS = ("serve", "floor")
_FLOOR_ANSWER = orjson.dumps({"frame_id": "f", "class_name": "c", "confidence": 0.9,
                              "action": "eject", "bin": "b", "top_k": [["c", 0.9]]})


def stub_inference() -> None:
    """Make decode and onnxruntime return constants in this process (the serve under test)."""
    from scrapvision.engine import Engine  # noqa: PLC0415
    from scrapvision.service import inference  # noqa: PLC0415

    def decode(_data: bytes, size: tuple[int, int], *_args: object, **_kwargs: object
               ) -> np.ndarray:
        return np.zeros((*size, 3), np.uint8)

    def predict(engine: Engine, batch: np.ndarray) -> np.ndarray:
        classes = len(engine.info.class_names)
        probs = np.full((len(batch), classes), 0.5 / max(classes - 1, 1), np.float32)
        probs[:, 0] = 0.5
        return probs

    inference.decode_frame = decode
    Engine.predict = predict


async def floor_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The least an ASGI server can do per frame: read it, answer fixed JSON."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
    elif scope["type"] == "http":
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": _FLOOR_ANSWER})
    else:
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] != "websocket.disconnect":
            if message.get("bytes") is not None:
                await send({"type": "websocket.send", "text": _FLOOR_ANSWER.decode()})


def server_command(server: str, config: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "bench.overhead", f"--run-{server}", str(config), str(port)]


def run_server(server: str, config: Path, port: int) -> None:
    """The server process itself (`--run-serve` / `--run-floor`)."""
    if server == "serve":
        stub_inference()
        from scrapvision.cli import app  # noqa: PLC0415

        app(["serve", "--config", str(config)])
    else:
        import uvicorn  # noqa: PLC0415

        uvicorn.run(floor_app, host="127.0.0.1", port=port, log_level="warning",
                    ws_max_size=64 * 2**20, ws_per_message_deflate=False)


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def measure(pid: int, url: str, transport: str, streams: int, frames: list[bytes],
            seconds: float, warmup: float) -> dict[str, float]:
    """Frames/s and the server's CPU microseconds per frame over one load window."""
    marks: list[float] = []
    timers = [threading.Timer(at, lambda: marks.append(cpu_seconds(pid)))
              for at in (warmup, warmup + seconds)]
    for timer in timers:
        timer.start()
    result = uvloop.run(run_load(url, transport, [THROUGHPUT_LINE], streams, frames, seconds,
                                 warmup))
    for timer in timers:
        timer.join()
    answered = result["fps"] * seconds
    if result["error"] or not answered:
        raise RuntimeError(f"{transport} load failed: {result}")
    return {"fps": result["fps"], "us_per_frame": (marks[1] - marks[0]) / answered * 1e6}


def pick_cpus() -> tuple[set[int], set[int], str]:
    """(server CPUs, client CPUs, how): one CPU each when there are two, else shared."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return set(cpus), set(cpus), f"server and load generator share CPU {cpus[0]}"
    return {cpus[0]}, {cpus[-1]}, f"server on CPU {cpus[0]}, load generator on CPU {cpus[-1]}"


def run(model: Path, frames: list[bytes], transports: list[str], streams: int, rounds: int,
        seconds: float, warmup: float, out: Path) -> dict[tuple[str, str], list[dict]]:
    server_cpus, client_cpus, how = pick_cpus()
    print(how, flush=True)
    registry = out / "registry"
    info = bench_registry(model, registry)
    results: dict[tuple[str, str], list[dict]] = {
        (server, transport): [] for transport in transports for server in SERVERS}
    for index in range(rounds):
        for server in SERVERS if index % 2 == 0 else SERVERS[::-1]:
            port = free_port()
            config = serve_config(out / server, registry, info.name, port, ServeLayout(1, 1),
                                  deadline_ms=80.0, max_streams=streams)
            with started(server_command(server, config, port), "/readyz", port, server_cpus,
                         out / f"{server}.log") as process:
                pin_to(client_cpus)
                for transport in transports:
                    figures = measure(process.process.pid, process.url, transport, streams,
                                      frames, seconds, warmup)
                    results[(server, transport)].append(figures)
                    print(f"  {server} {transport}: {figures['fps']:.0f} frames/s, "
                          f"{figures['us_per_frame']:.1f} us per frame", flush=True)
    return results


def table(results: dict[tuple[str, str], list[dict]]) -> str:
    rows = ["| server | transport | CPU per frame (median) | runs | frames/s (median) |",
            "|---|---|---|---|---|"]
    for (server, transport), runs in results.items():
        cost = [run["us_per_frame"] for run in runs]
        fps = [run["fps"] for run in runs]
        rows.append(f"| {server} | {transport} | {statistics.median(cost):.0f} us | "
                    f"{', '.join(f'{c:.0f}' for c in cost)} | {statistics.median(fps):.0f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0].startswith("--run-"):
        run_server(argv[0].removeprefix("--run-"), Path(argv[1]), int(argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None,
                        help="ONNX model (default: the shipped ewaste model); only its "
                        "metadata matters, inference is stubbed")
    parser.add_argument("--frames", type=Path, default=FRAMES / "640x480")
    parser.add_argument("--transport", choices=("http", "ws", "both"), default="both")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each server, alternating")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=OUT / "overhead")
    args = parser.parse_args(argv)
    transports = ["http", "ws"] if args.transport == "both" else [args.transport]
    results = run(args.model or default_model(), load_frames(args.frames), transports,
                  args.streams, args.rounds, args.seconds, args.warmup, args.out)
    print(table(results))


if __name__ == "__main__":
    main()
