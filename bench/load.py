"""Load generator: many camera streams against `scrapvision serve` or the naive baseline.

Transports:
- `http`: POST the raw JPEG bytes to `/v1/lines/{line}/frames` (metadata in headers);
- `ws`: one WebSocket per stream on `/v1/lines/{line}/stream`, binary frame in, JSON out;
- `naive`: multipart upload to the naive baseline's `/predict`.

Two ways to load:
- closed loop (default): each stream sends its next frame as soon as the previous answer
  is back (after a 503 or an error it pauses 50 ms); frames/s at 1, 4, 16 streams
  measures throughput.
- fixed rate (`--rate 15 --deadline-ms 80`): each stream is a camera sending at that rate
  whether or not answers are back, stamping each frame with its capture time; reports the
  share of frames decided in time (the decision-deadline scenario).

The client is one asyncio process on uvloop, written to cost the server as little CPU as
possible on a 2-core machine: each connection is a bare asyncio protocol, HTTP answers are
parsed by httptools, and WebSocket frames are framed by hand (see `WsConnection`). Per
frame at 16 streams this costs about 145 us of CPU over HTTP, against 340 us with aiohttp's
client. It reports its own CPU use, and `--cpus` pins it away from the server where there
are cores to spare.

    python -m bench.load --transport http --streams 1,4,16 --line ewaste
    python -m bench.load --transport ws --line l1 --line l2 --line l3 --line l4 \
        --streams 4 --rate 15 --deadline-ms 80 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import itertools
import json
import resource
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httptools
import uvloop

from bench.common import FRAMES, append_json, latency_summary, load_frames, parse_cpus, pin_to

TRANSPORTS = ("http", "ws", "naive")
OVERLOAD_STATUS = 503
# A refused or failed stream pauses this long before its next frame, as a camera skips a
# frame, instead of spinning on instant 503s or errors and taking CPU from the server.
REFUSED_PAUSE_S = 0.05
REQUEST_TIMEOUT_S = 60.0
# RFC 6455: opcodes, and the accept value the server derives from this (fixed) client key
WS_TEXT, WS_BINARY, WS_CLOSE, WS_PING, WS_PONG = 0x1, 0x2, 0x8, 0x9, 0xA
WS_KEY = "c2NyYXB2aXNpb24tbG9hZA=="  # base64 of 16 bytes, as the RFC asks
WS_ACCEPT = base64.b64encode(hashlib.sha1(
    (WS_KEY + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
WS_ZERO_MASK = bytes(4)
WS_NORMAL_CLOSURE = (1000).to_bytes(2, "big")
MULTIPART_BOUNDARY = "scrapvision-bench-frame"
MULTIPART_HEAD = (f"--{MULTIPART_BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; "
                  "filename=\"%s.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode()
MULTIPART_TAIL = f"\r\n--{MULTIPART_BOUNDARY}--\r\n".encode()


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


class HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one request at a time."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.answer: asyncio.Future[tuple[int, bytes]] | None = None
        self.body: list[bytes] = []
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"bad HTTP answer: {exc}"))
            self.close()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.closed = self.closed or not self.parser.should_keep_alive()
        if self.answer is not None and not self.answer.done():
            self.answer.set_result((self.parser.get_status_code(), b"".join(self.body)))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionError("server closed the connection"))

    def _fail(self, exc: Exception) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def request(self, head: bytes, body: bytes) -> tuple[int, bytes]:
        """(status, body) of one request; ConnectionError or TimeoutError when none comes."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self.body, self.answer = [], loop.create_future()
        self.transport.writelines((head, body))
        timer = loop.call_later(REQUEST_TIMEOUT_S, self._fail, TimeoutError("no answer"))
        try:
            return await self.answer
        finally:
            timer.cancel()


class WsConnection(asyncio.Protocol):
    """One WebSocket client connection (RFC 6455) with its framing written out here.

    A load generator, not a browser: frames go out masked with an all-zero key, which any
    server accepts and which leaves the payload as it is, so a 60 KB frame is written
    straight from its bytes instead of through a masked copy: 139 us of client user CPU per
    frame against 178 us with websockets' sans-I/O protocol, CPU taken from the server on 2
    cores. The server still unmasks every byte, so its cost is unchanged. Answers are
    queued as they arrive.
    """

    def __init__(self, host: str, port: int, path: str) -> None:
        self.request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                        f"Connection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\n"
                        "Sec-WebSocket-Version: 13\r\n\r\n").encode()
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.answers: asyncio.Queue[str | None] = asyncio.Queue()
        self.buffer = bytearray()
        self.closed = False  # closed or closing: no frame can be sent any more

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.opened.done() and not self._handshake():
            return
        try:
            while (frame := self._next_frame()) is not None:
                self._on_frame(*frame)
        except ConnectionError as exc:
            self._lost(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._lost(ConnectionError("server closed the connection"))

    def send(self, meta: str, frame: bytes) -> None:
        text = meta.encode()
        self._write(ws_header(WS_TEXT, len(text)), text, ws_header(WS_BINARY, len(frame)), frame)

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self._write(ws_header(WS_CLOSE, 2), WS_NORMAL_CLOSURE)
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _handshake(self) -> bool:
        """Consume the server's 101 answer once it is complete; False while it is not."""
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self.buffer[:end]).decode("latin-1")
        del self.buffer[:end + 4]
        if not head.startswith("HTTP/1.1 101") or WS_ACCEPT not in head:
            self.opened.set_exception(ConnectionError(
                f"WebSocket refused: {head.splitlines()[0] if head else 'empty answer'}"))
            self.close()
            return False
        self.opened.set_result(None)
        return True

    def _next_frame(self) -> tuple[int, bytes] | None:
        """(opcode, payload) of the next whole frame in the buffer, or None."""
        buffer = self.buffer
        if len(buffer) < 2:
            return None
        if buffer[1] & 0x80:
            raise ConnectionError("the server masked a frame")
        if not buffer[0] & 0x80:
            raise ConnectionError("the server fragmented a message")
        length, start = buffer[1] & 0x7F, 2
        if length >= 126:
            start += 2 if length == 126 else 8
            if len(buffer) < start:
                return None
            length = int.from_bytes(buffer[2:start], "big")
        if len(buffer) < start + length:
            return None
        opcode, payload = buffer[0] & 0x0F, bytes(buffer[start:start + length])
        del buffer[:start + length]
        return opcode, payload

    def _on_frame(self, opcode: int, payload: bytes) -> None:
        if opcode == WS_TEXT:
            self.answers.put_nowait(payload.decode())
        elif opcode == WS_PING and not self.closed:
            self._write(ws_header(WS_PONG, len(payload)), payload)
        elif opcode == WS_CLOSE:
            self.close()

    def _write(self, *chunks: bytes) -> None:
        assert self.transport is not None
        self.transport.writelines(chunks)

    def _lost(self, exc: ConnectionError) -> None:
        """The connection is gone or unusable: pending and later receives fail at once."""
        if not self.opened.done():
            self.opened.set_exception(exc)
        if not self.closed:
            self.close()
        self.answers.put_nowait(None)


def ws_header(opcode: int, length: int) -> bytes:
    """A final client frame's header, masked with the all-zero key (see WsConnection)."""
    if length < 126:
        size = bytes((0x80 | length,))
    elif length < 1 << 16:
        size = bytes((0x80 | 126,)) + length.to_bytes(2, "big")
    else:
        size = bytes((0x80 | 127,)) + length.to_bytes(8, "big")
    return bytes((0x80 | opcode,)) + size + WS_ZERO_MASK


class Stream:
    """One camera: sends frames over one transport and records outcomes."""

    def __init__(self, url: str, transport: str, line: str, name: str,
                 deadline_ms: float | None) -> None:
        self.transport = transport
        self.name = name
        self.deadline_ms = deadline_ms
        self.ws: WsConnection | None = None
        self.idle: list[HttpConnection] = []  # keep-alive connections not carrying a request
        self.counter = itertools.count()
        split = urlsplit(url)
        self.host, self.port = split.hostname or "127.0.0.1", split.port or 80
        if transport == "naive":
            self.path = "/predict"
        elif transport == "http":
            self.path = f"/v1/lines/{line}/frames"
        else:
            self.path = f"/v1/lines/{line}/stream"

    async def open(self) -> None:
        if self.transport == "ws":
            loop = asyncio.get_running_loop()
            _, self.ws = await loop.create_connection(lambda: WsConnection(self.host, self.port, self.path),
                                                      self.host, self.port)
            await self.ws.opened

    async def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
        for connection in self.idle:
            connection.close()

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

    def _request(self, frame_id: str, capture_time: float, frame: bytes) -> tuple[bytes, bytes]:
        """Head and body of one POST: the raw frame, or a multipart upload for `naive`."""
        if self.transport == "naive":
            body = b"".join((MULTIPART_HEAD % frame_id.encode(), frame, MULTIPART_TAIL))
            fields = f"Content-Type: multipart/form-data; boundary={MULTIPART_BOUNDARY}\r\n"
        else:
            body = frame
            fields = (f"Content-Type: image/jpeg\r\nX-Frame-Id: {frame_id}\r\n"
                      f"X-Capture-Time: {capture_time:.6f}\r\n")
        head = (f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{fields}"
                f"Content-Length: {len(body)}\r\n\r\n")
        return head.encode(), body

    async def post(self, frame: bytes, capture_time: float) -> Outcome:
        """One request/response over HTTP, on an idle keep-alive connection or a new one."""
        frame_id = f"{self.name}-{next(self.counter)}"
        head, body = self._request(frame_id, capture_time, frame)
        sent = time.perf_counter()
        try:
            connection = self.idle.pop() if self.idle else await self._connect()
        except OSError:
            return self._outcome(sent, 0, None)
        try:
            status, answer = await connection.request(head, body)
        except (OSError, TimeoutError):
            connection.close()  # its state is unknown: never reused
            return self._outcome(sent, 0, None)
        if not connection.closed:
            self.idle.append(connection)
        decision = json.loads(answer) if status == 200 else None
        return self._outcome(sent, status, decision)

    async def _connect(self) -> HttpConnection:
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(HttpConnection, self.host, self.port)
        return connection

    async def ws_send(self, frame: bytes, capture_time: float) -> float | None:
        """Send one frame on the stream; its send time (answers come in order), or None
        when the socket is gone."""
        assert self.ws is not None
        if self.ws.closed:
            return None
        frame_id = f"{self.name}-{next(self.counter)}"
        sent = time.perf_counter()
        self.ws.send(json.dumps({"frame_id": frame_id, "capture_time": capture_time}), frame)
        return sent

    async def ws_receive(self, sent: float) -> Outcome:
        assert self.ws is not None
        message = await self.ws.answers.get()
        if message is None:  # the socket closed: every later receive fails at once too
            self.ws.answers.put_nowait(None)
            return self._outcome(sent, 0, None)
        decision = json.loads(message)
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
        if outcome.status in ("overload", "error"):
            await asyncio.sleep(REFUSED_PAUSE_S)


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
    cameras = [Stream(url, transport, lines[i % len(lines)], f"s{i}", deadline_ms)
               for i in range(streams)]
    await asyncio.gather(*(camera.open() for camera in cameras))
    try:
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
    finally:
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
