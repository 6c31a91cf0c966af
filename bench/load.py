"""Load generator: many camera streams against `scrapvision serve` or the naive baseline.

Transports:
- `http`: POST the raw JPEG bytes to `/v1/lines/{line}/frames` (metadata in headers);
- `ws`: one WebSocket per stream on `/v1/lines/{line}/stream`, binary frame in, JSON out;
- `naive`: multipart upload to the naive baseline's `/predict`.

Two ways to load:
- closed loop (default): each stream sends its next frame as soon as the previous answer
  is back (after a 503 it pauses 50 ms); frames/s at 1, 4, 16 streams measures throughput.
- fixed rate (`--rate 15 --deadline-ms 80`): each stream is a camera sending at that rate
  whether or not answers are back, stamping each frame with its capture time; reports the
  share of frames decided in time (the decision-deadline scenario).

The client is one asyncio process (aiohttp on uvloop) so it costs little CPU; it reports
its own CPU use, and `--cpus` pins it away from the server where there are cores to spare.

    python -m bench.load --transport http --streams 1,4,16 --line ewaste
    python -m bench.load --transport ws --line l1 --line l2 --line l3 --line l4 \
        --streams 4 --rate 15 --deadline-ms 80 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import resource
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from bench.common import FRAMES, append_json, latency_summary, load_frames, parse_cpus, pin_to

TRANSPORTS = ("http", "ws", "naive")
OVERLOAD_STATUS = 503
# A refused stream pauses this long before its next frame, as a camera skips a frame,
# instead of spinning on instant 503s and taking CPU from the server it measures.
OVERLOAD_PAUSE_S = 0.05


@dataclass(slots=True)
class Outcome:
    """What happened to one frame, seen from the camera."""

    sent: float  # perf_counter when the frame left
    latency_ms: float
    status: str  # "decided", "late", "overload" or "error"
    in_time: bool  # decided, server says in time, and the answer came back before the deadline


@dataclass
class Tally:
    """Outcomes inside the measured window (warm-up excluded)."""

    window_start: float
    window_end: float
    outcomes: list[Outcome] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        if self.window_start <= outcome.sent < self.window_end:
            self.outcomes.append(outcome)


def classify(status: int, decision: dict[str, Any] | None) -> tuple[str, bool]:
    """(status, server-side in_time) from an HTTP status and the decision JSON."""
    if status == OVERLOAD_STATUS:
        return "overload", False
    if status != 200 or decision is None:
        return "error", False
    action = decision.get("action")
    if action in ("late", "overload"):
        return action, False
    return "decided", bool(decision.get("in_time", True))


def frame_headers(frame_id: str, capture_time: float) -> dict[str, str]:
    return {"Content-Type": "image/jpeg", "X-Frame-Id": frame_id,
            "X-Capture-Time": f"{capture_time:.6f}"}


class Stream:
    """One camera: sends frames over one transport and records outcomes."""

    def __init__(self, session: aiohttp.ClientSession, url: str, transport: str, line: str,
                 name: str, deadline_ms: float | None) -> None:
        self.session = session
        self.transport = transport
        self.name = name
        self.deadline_ms = deadline_ms
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.counter = itertools.count()
        if transport == "naive":
            self.endpoint = f"{url}/predict"
        elif transport == "http":
            self.endpoint = f"{url}/v1/lines/{line}/frames"
        else:
            self.endpoint = f"{url.replace('http', 'ws', 1)}/v1/lines/{line}/stream"

    async def open(self) -> None:
        if self.transport == "ws":
            self.ws = await self.session.ws_connect(self.endpoint, max_msg_size=0)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()

    @property
    def lost(self) -> bool:
        """The WebSocket was closed under us: this stream cannot send any more."""
        return self.ws is not None and self.ws.closed

    def failed(self) -> Outcome:
        return Outcome(time.perf_counter(), 0.0, "error", False)

    def _outcome(self, sent: float, status: int, decision: dict[str, Any] | None) -> Outcome:
        latency_ms = (time.perf_counter() - sent) * 1000.0
        kind, server_in_time = classify(status, decision)
        in_time = kind == "decided" and server_in_time and (
            self.deadline_ms is None or latency_ms <= self.deadline_ms)
        return Outcome(sent, latency_ms, kind, in_time)

    async def post(self, frame: bytes, capture_time: float) -> Outcome:
        """One request/response over HTTP (raw body, or multipart for the naive service)."""
        frame_id = f"{self.name}-{next(self.counter)}"
        sent = time.perf_counter()
        try:
            if self.transport == "naive":
                form = aiohttp.FormData()
                form.add_field("file", frame, filename=f"{frame_id}.jpg",
                               content_type="image/jpeg")
                response_cm = self.session.post(self.endpoint, data=form)
            else:
                response_cm = self.session.post(self.endpoint, data=frame,
                                                headers=frame_headers(frame_id, capture_time))
            async with response_cm as response:
                decision = await response.json() if response.status == 200 else None
                return self._outcome(sent, response.status, decision)
        except aiohttp.ClientError:
            return self._outcome(sent, 0, None)

    async def ws_send(self, frame: bytes, capture_time: float) -> float | None:
        """Send one frame on the stream; its send time (answers come in order), or None
        when the socket is gone."""
        assert self.ws is not None
        frame_id = f"{self.name}-{next(self.counter)}"
        sent = time.perf_counter()
        try:
            await self.ws.send_str(json.dumps({"frame_id": frame_id,
                                               "capture_time": capture_time}))
            await self.ws.send_bytes(frame)
        except (aiohttp.ClientError, ConnectionError):
            return None
        return sent

    async def ws_receive(self, sent: float) -> Outcome:
        assert self.ws is not None
        message = await self.ws.receive()
        if message.type != aiohttp.WSMsgType.TEXT:
            return self._outcome(sent, 0, None)
        decision = json.loads(message.data)
        # a decision record carries an action (maybe "overload"); an error entry does not
        return self._outcome(sent, 200 if "action" in decision else 0, decision)


async def send_and_wait(stream: Stream, frame: bytes) -> Outcome:
    """One frame, answer awaited (over either transport)."""
    if stream.transport != "ws":
        return await stream.post(frame, time.time())
    sent = await stream.ws_send(frame, time.time())
    return stream.failed() if sent is None else await stream.ws_receive(sent)


async def closed_loop(stream: Stream, frames: list[bytes], offset: int, tally: Tally) -> None:
    """Next frame as soon as the previous answer is back, until the window ends."""
    for index in itertools.count(offset):
        if time.perf_counter() >= tally.window_end or stream.lost:
            return
        outcome = await send_and_wait(stream, frames[index % len(frames)])
        tally.add(outcome)
        if outcome.status == "overload":
            await asyncio.sleep(OVERLOAD_PAUSE_S)


async def fixed_rate(stream: Stream, frames: list[bytes], offset: int, tally: Tally,
                     rate: float, phase: float) -> None:
    """A camera at `rate` frames/s: sends on schedule whether or not answers are back.

    `phase` (0..1 of a frame period) staggers the cameras, as on real lines.
    """
    period = 1.0 / rate
    pending: asyncio.Queue[float] = asyncio.Queue()
    posts: set[asyncio.Task[Outcome]] = set()

    async def receive_in_order() -> None:
        while (sent := await pending.get()) >= 0:
            tally.add(await stream.ws_receive(sent))

    receiver = asyncio.create_task(receive_in_order()) if stream.transport == "ws" else None
    start = time.perf_counter() + phase * period
    for index in itertools.count():
        due = start + index * period
        if due >= tally.window_end:
            break
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        frame = frames[(offset + index) % len(frames)]
        capture_time = time.time()
        if receiver is not None:
            sent = await stream.ws_send(frame, capture_time)
            if sent is None:
                tally.add(stream.failed())
                break
            pending.put_nowait(sent)
        else:
            task = asyncio.create_task(stream.post(frame, capture_time))
            task.add_done_callback(lambda t: (posts.discard(t), tally.add(t.result())))
            posts.add(task)
    if receiver is not None:
        pending.put_nowait(-1.0)
        await receiver
    await asyncio.gather(*posts)


async def run_load(url: str, transport: str, lines: list[str], streams: int,
                   frames: list[bytes], seconds: float, warmup: float = 1.0,
                   rate: float | None = None, deadline_ms: float | None = None) -> dict[str, Any]:
    """Drive `streams` cameras (spread over `lines`) and summarise the measured window."""
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        cameras = [Stream(session, url, transport, lines[i % len(lines)], f"s{i}", deadline_ms)
                   for i in range(streams)]
        await asyncio.gather(*(camera.open() for camera in cameras))
        # one answered frame per stream first: connections open, first-call costs paid
        await asyncio.gather(*(send_and_wait(camera, frames[0]) for camera in cameras))
        now = time.perf_counter()
        tally = Tally(now + warmup, now + warmup + seconds)
        cpu_start = _cpu_seconds()

        def drive(i: int, camera: Stream) -> Awaitable[None]:
            offset = i * len(frames) // streams
            if rate is None:
                return closed_loop(camera, frames, offset, tally)
            return fixed_rate(camera, frames, offset, tally, rate, phase=i / streams)

        await asyncio.gather(*(drive(i, camera) for i, camera in enumerate(cameras)))
        cpu_used, wall = _cpu_seconds() - cpu_start, time.perf_counter() - now
        await asyncio.gather(*(camera.close() for camera in cameras))
    return summarise(tally, transport, streams, rate, deadline_ms, cpu_used / wall)


def summarise(tally: Tally, transport: str, streams: int, rate: float | None,
              deadline_ms: float | None, client_cpu: float) -> dict[str, Any]:
    outcomes = tally.outcomes
    decided = [o for o in outcomes if o.status == "decided"]
    seconds = tally.window_end - tally.window_start
    counts = {kind: sum(o.status == kind for o in outcomes)
              for kind in ("decided", "late", "overload", "error")}
    result = {
        "transport": transport, "streams": streams, "rate": rate, "deadline_ms": deadline_ms,
        "seconds": seconds, "sent": len(outcomes), **counts,
        "fps": len(decided) / seconds,
        **latency_summary([o.latency_ms for o in decided]),
        "client_cpu": client_cpu,  # CPU seconds per second used by this load generator
    }
    if deadline_ms is not None:
        result["in_time"] = sum(o.in_time for o in outcomes)
        result["in_time_share"] = result["in_time"] / max(1, len(outcomes))
    return result


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def parse_streams(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"streams must look like 1,4,16, got {text!r}") from None
    if any(c < 1 for c in counts):
        raise argparse.ArgumentTypeError("every stream count must be at least 1")
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--transport", choices=TRANSPORTS, default="http")
    parser.add_argument("--line", action="append",
                        help="line name, repeatable; streams are spread over the lines "
                        "(default ewaste)")
    parser.add_argument("--streams", type=parse_streams, default=[1, 4, 16],
                        help="concurrent streams, comma-separated: one run per count")
    parser.add_argument("--frames", type=Path, default=FRAMES / "640x480")
    parser.add_argument("--max-frames", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--rate", type=float, default=None,
                        help="frames/s per stream (fixed-rate cameras) instead of closed loop")
    parser.add_argument("--deadline-ms", type=float, default=None,
                        help="count a frame in time only if decided within this many ms")
    parser.add_argument("--cpus", default=None, help="pin the load generator, e.g. 1")
    parser.add_argument("--json", type=Path, default=None, help="append results as JSON lines")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or (args.rate is not None and args.rate <= 0):
        parser.error("--seconds and --rate must be positive")
    pin_to(parse_cpus(args.cpus))
    frames = load_frames(args.frames, args.max_frames)
    lines = args.line or ["ewaste"]
    for streams in args.streams:
        result = uvloop.run(run_load(args.url, args.transport, lines, streams, frames,
                                     args.seconds, args.warmup, args.rate, args.deadline_ms))
        result["frame_set"] = args.frames.name
        in_time = (f", in time {result['in_time_share']:.2%}"
                   if "in_time_share" in result else "")
        print(f"{args.transport} x{streams} {args.frames.name}: {result['fps']:.1f} frames/s, "
              f"p50 {result['p50_ms']:.1f} p99 {result['p99_ms']:.1f} ms, "
              f"late {result['late']}, overload {result['overload']}, errors {result['error']}"
              f"{in_time}, client CPU {result['client_cpu']:.2f}")
        append_json(args.json, {"bench": "load", "url": args.url, **result})


if __name__ == "__main__":
    main()
