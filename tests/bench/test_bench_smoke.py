"""Each bench script runs on a few frames with the tiny model (no timing is asserted)."""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import uvloop
from tinymodel import BGR, colour_frame

from bench import make_frames, overhead, report
from bench.common import (
    REPO,
    SIMD_FLAGS,
    cpu_model_and_simd,
    latency_summary,
    load_frames,
    parse_cpus,
)
from bench.inprocess import Job, Layout, measure
from bench.load import WS_BINARY, WS_TEXT, Stream, WsConnection, classify, run_load, ws_header
from bench.run_all import (
    ServeLayout,
    allocate_cpus,
    bench_registry,
    default_first,
    free_port,
    serve_config,
    started,
)
from scrapvision.modelmeta import ModelInfo

HAS_TORCH = all(importlib.util.find_spec(m) for m in ("torch", "timm", "torchvision"))
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch/timm/torchvision not installed")


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """An ImageFolder of solid-colour 'item photos' with a split.csv, like the shared sets."""
    root = tmp_path / "photos"
    rows = ["file,label,split,group"]
    for colour in ("blue", "green", "red"):
        (root / colour).mkdir(parents=True)
        for i, split in enumerate(("train", "train", "test")):
            image = np.full((40, 30, 3), BGR[colour], dtype=np.uint8)
            cv2.imwrite(str(root / colour / f"{i}.png"), image)
            rows.append(f"{colour}/{i}.png,{colour},{split},{colour}{i}")
    (root / "split.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def frames(tmp_path: Path) -> Path:
    """A frame folder of encoded solid-colour frames the tiny model classifies."""
    folder = tmp_path / "frames" / "640x480"
    folder.mkdir(parents=True)
    for i, colour in enumerate(("red", "green", "blue")):
        (folder / f"{i:05d}.jpg").write_bytes(colour_frame(colour, 640, 480))
    return folder


def test_make_frames_places_a_photo_on_a_belt(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "made"
    make_frames.main(["--source", str(photos), "--out", str(out), "--count", "4",
                      "--size", "160x120", "--size", "96x64"])
    for size, shape in (("160x120", (120, 160, 3)), ("96x64", (64, 96, 3))):
        files = sorted((out / size).glob("*.jpg"))
        assert len(files) == 4
        for file in files:
            frame = cv2.imread(str(file))
            assert frame.shape == shape
            # the belt is grey; a saturated item photo must have been pasted on it
            saturation = cv2.cvtColor(frame, cv2.COLOR_BGR2HSV)[..., 1]
            assert (saturation > 200).mean() > 0.05


def test_make_frames_refuses_a_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no images"):
        make_frames.main(["--source", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])


def test_make_frames_refuses_a_bad_size() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="640x480"):
        make_frames.parse_size("big")


def test_layout_and_cpu_parsing() -> None:
    assert Layout.parse("2x1") == Layout(2, 1)
    assert str(Layout.parse("1X2")) == "1x2"
    for bad in ("2", "0x1", "axb"):
        with pytest.raises(argparse.ArgumentTypeError):
            Layout.parse(bad)
    assert parse_cpus("0-2,5") == {0, 1, 2, 5}
    assert parse_cpus(None) is None


def test_machine_record_names_the_vector_extensions_the_cpu_has() -> None:
    model, simd = cpu_model_and_simd()
    assert model
    assert set(simd) <= set(SIMD_FLAGS)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():  # Linux: each flag listed is one the kernel reports, and vice versa
        flags = next(line for line in cpuinfo.read_text().splitlines()
                     if line.startswith("flags")).split(":", 1)[1].split()
        assert simd == [flag for flag in SIMD_FLAGS if flag in flags]


def test_latency_summary_percentiles() -> None:
    summary = latency_summary(list(range(1, 101)))
    assert summary["p50_ms"] == pytest.approx(50.5)
    assert summary["p99_ms"] == pytest.approx(99.01)
    assert summary["max_ms"] == 100
    assert np.isnan(latency_summary([])["p50_ms"])


def test_load_frames_says_how_to_make_them(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="make_frames"):
        load_frames(tmp_path)


@pytest.mark.parametrize("reduced", [True, False])
def test_inprocess_measures_frames_per_second(tiny_model: Path, frames: Path,
                                              reduced: bool) -> None:
    job = Job(tiny_model, frames, threads=1, batch=2, reduced_decode=reduced, seconds=0.2,
              cpus=None, max_frames=None)
    result = measure(job, processes=1)
    assert result["layout"] == "1x1"
    assert result["frames"] >= 2 and result["frames"] % 2 == 0  # whole batches of 2
    assert result["fps"] > 0
    assert result["p50_ms"] <= result["p99_ms"]


def test_classify_maps_answers_to_outcomes() -> None:
    assert classify(200, {"action": "eject", "in_time": True}) == ("decided", True)
    assert classify(200, {"action": "recirculate", "in_time": False}) == ("decided", False)
    assert classify(200, {"action": "late", "in_time": False}) == ("late", False)
    assert classify(503, {"action": "overload"}) == ("overload", False)
    assert classify(415, None) == ("error", False)


def test_serve_default_layout_is_measured_first() -> None:
    from scrapvision.settings import Settings

    defaults = Settings.model_fields
    layouts = default_first((ServeLayout(1, 2), ServeLayout(9, 1)))
    assert layouts[0] == ServeLayout(defaults["workers"].default,
                                     defaults["ort_threads"].default,
                                     defaults["inference"].default,
                                     defaults["inference_threads"].default)
    assert layouts[1:] == [x for x in (ServeLayout(1, 2), ServeLayout(9, 1)) if x != layouts[0]]


def test_cpu_allocation_never_overlaps_when_split() -> None:
    cpus = allocate_cpus("split")
    assert cpus.server and cpus.client and not cpus.server & cpus.client
    shared = allocate_cpus("none")
    assert shared.server == shared.client


@pytest.fixture
def tiny_server(tmp_path: Path, tiny_model: Path):
    """`scrapvision serve` on a free port with the tiny model on the bench's lines."""
    registry = tmp_path / "registry"
    info = bench_registry(tiny_model, registry)
    port = free_port()
    config = serve_config(tmp_path / "serve", registry, info.name, port, ServeLayout(1, 1),
                          deadline_ms=80, max_streams=2)
    command = [sys.executable, "-m", "scrapvision", "serve", "--config", str(config)]
    with started(command, "/readyz", port, allocate_cpus("none").server,
                 tmp_path / "serve.log") as server:
        yield server


@pytest.mark.parametrize("transport", ["http", "ws"])
def test_load_against_the_service(tiny_server, frames: Path, transport: str) -> None:
    frame_bytes = load_frames(frames)
    result = uvloop.run(run_load(tiny_server.url, transport, ["bench"], 2, frame_bytes,
                                 seconds=0.3, warmup=0.1))
    assert result["decided"] > 0 and result["error"] == 0
    assert result["fps"] > 0 and result["client_cpu"] >= 0
    assert tiny_server.ready_s > 0
    tiny_server.sample_memory()
    assert tiny_server.rss_mb > 0


def test_ws_client_refused_by_the_server_says_so(tiny_server) -> None:
    async def open_unknown_line() -> None:
        await Stream(tiny_server.url, "ws", "no-such-line", "s0", None).open()

    with pytest.raises(ConnectionError, match="refused"):
        uvloop.run(open_unknown_line())


def test_ws_client_parses_frames_of_every_length_however_they_arrive() -> None:
    """Server frames are unmasked: 7-bit, 16-bit and 64-bit lengths, split across reads."""

    def server_frame(opcode: int, payload: bytes) -> bytes:
        client = ws_header(opcode, len(payload))  # the same layout with mask bit and key
        return bytes((client[0], client[1] & 0x7F)) + client[2:-4] + payload

    answers = [b"x" * 5, b"y" * 300, b"z" * 70_000]

    async def feed() -> list[str | None]:
        connection = WsConnection("127.0.0.1", 1, "/stream")
        connection.opened.set_result(None)
        stream = b"".join(server_frame(WS_TEXT, a) for a in answers)
        for start in range(0, len(stream), 999):  # reads that cut headers and payloads
            connection.data_received(stream[start:start + 999])
        connection.data_received(bytes((0x80 | WS_TEXT, 0x85)) + bytes(9))  # masked: refused
        return [connection.answers.get_nowait() for _ in range(len(answers) + 1)]

    assert uvloop.run(feed()) == [a.decode() for a in answers] + [None]


def test_ws_client_frames_are_masked_with_the_zero_key() -> None:
    assert ws_header(WS_BINARY, 5) == bytes((0x82, 0x85)) + bytes(4)
    assert ws_header(WS_BINARY, 300)[:4] == bytes((0x82, 0xFE, 0x01, 0x2C))
    assert ws_header(WS_BINARY, 70_000)[1] == 0xFF and len(ws_header(WS_BINARY, 70_000)) == 14


def test_connection_spread_counts_open_client_connections(tiny_server) -> None:
    connection = http.client.HTTPConnection(tiny_server.url.removeprefix("http://"))
    connection.request("GET", "/healthz")
    assert connection.getresponse().read()
    try:
        assert sum(tiny_server.connection_spread()) == 1  # kept alive, so still established
    finally:
        connection.close()


def test_fixed_rate_cameras_report_share_in_time(tiny_server, frames: Path) -> None:
    frame_bytes = load_frames(frames)
    result = uvloop.run(run_load(tiny_server.url, "ws", ["line1", "line2"], 2, frame_bytes,
                                 seconds=0.5, warmup=0.1, rate=20, deadline_ms=80))
    # two cameras at 20/s for 0.5 s: 20 frames due (at most 11 each), every one accounted for
    assert 10 <= result["sent"] <= 22
    outcomes = ("decided", "late", "overload", "error")
    assert result["sent"] == sum(result[kind] for kind in outcomes)
    assert 0 <= result["in_time"] <= result["decided"]
    assert result["in_time_share"] == result["in_time"] / result["sent"]


@needs_torch
def test_naive_service_classifies_an_upload(tiny_model: Path) -> None:
    from fastapi.testclient import TestClient

    from bench.naive_service import PREDICT_PATH, create_app, served_shape

    info = served_shape(tiny_model)
    with TestClient(create_app(info)) as client:
        response = client.post(PREDICT_PATH, files={"file": ("f.jpg", colour_frame("red"))})
    assert response.status_code == 200
    assert 0 <= response.json()["class_index"] < info.num_classes
    assert 0 < response.json()["confidence"] <= 1


@needs_torch
@pytest.mark.parametrize(("architecture", "timm_name"), [
    ("efficientnet_lite2 (timm tf_efficientnet_lite2)", "tf_efficientnet_lite2"),
    ("tf_efficientnet_lite1", "tf_efficientnet_lite1"),  # a stand-in names timm's model
    ("tiny-colour-test", "tf_efficientnet_lite0"),
])
def test_naive_baseline_builds_the_served_architecture(architecture: str, timm_name: str) -> None:
    from bench.standin import timm_architecture

    info = ModelInfo(name="m", version="v1", class_names=["a", "b"], input_size=(224, 224),
                     architecture=architecture)
    assert timm_architecture(info) == timm_name


def test_quantize_keeps_accuracy_of_the_tiny_model(tiny_model: Path, photos: Path,
                                                   frames: Path, tmp_path: Path) -> None:
    from bench.quantize import compare

    result = compare(tiny_model, photos, photos / "split.csv", tmp_path / "int8.onnx",
                     calibration_count=6, frames_dir=frames, seconds=0.2)
    assert result["test_rows"] == 3 and result["calibration_rows"] == 6
    assert result["fp32_top1"] == 100.0
    assert result["top1_drop_points"] == result["fp32_top1"] - result["int8_top1"]
    assert Path(result["int8_model"]).is_file()


def test_run_all_quick_writes_results(tiny_model: Path, frames: Path, tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    command = [sys.executable, "-m", "bench.run_all", "--quick", "--model", str(tiny_model),
               "--frames", str(frames.parent), "--out", str(tmp_path / "out"),
               "--results", str(results)]
    if not HAS_TORCH:
        command.append("--no-naive")
    subprocess.run(command, cwd=REPO, check=True, timeout=300, capture_output=True)
    raw = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {r["transport"] for r in raw["serve"][0]["loads"]} == {"http", "ws"}
    assert len(raw["serve"]) >= 2  # the service default first, then the alternatives
    assert len(raw["serve"][0]["deadline"]) == 2
    assert raw["inprocess"] and raw["serve"][0]["rss_mb"] > 0
    assert sum(raw["serve"][0]["loads"][-1]["connections"]) >= 1
    text = results.read_text()
    assert "## Targets" in text and "serve RSS" in text and "deadline scenario" in text
    rounds = raw["serve"][0]["ratio_rounds"]
    # QUICK: one slice per transport, each between two limit slices
    assert [(r["frame_set"], r["transport"]) for r in rounds] == [
        (frame_set, transport) for frame_set in raw["frames"] for transport in ("http", "ws")]
    assert all(r["fps"] > 0 and r["limit_before"] > 0 and r["limit_after"] > 0 for r in rounds)
    assert rounds[0]["limit_after"] == rounds[1]["limit_before"]  # slices share a limit slice
    assert "median of 1 slices" in text
    assert raw["machine"]["simd"] == cpu_model_and_simd()[1]
    loads = raw["serve"][0]["loads"] + (raw["naive"]["loads"] if HAS_TORCH else [])
    assert all(load["decided"] > 0 and load["error"] == 0 for load in loads)
    if HAS_TORCH:
        assert raw["naive"]["loads"] and "naive" in text


def test_ratio_targets_take_the_median_of_the_slices_between_limit_slices() -> None:
    limit = {"layout": "2x1", "batch": 1, "reduced_decode": True, "frame_set": "640x480",
             "fps": 100.0}
    first = {"transport": "ws", "frame_set": "640x480", "streams": 16, "fps": 80.0}
    rounds = [{"frame_set": "640x480", "layout": "2x1", "transport": transport, "fps": fps,
               "limit_before": before, "limit_after": after}
              for transport, fps, before, after in (("ws", 95.0, 100.0, 110.0),
                                                    ("http", 50.0, 110.0, 100.0),
                                                    ("ws", 84.0, 100.0, 80.0),
                                                    ("ws", 99.0, 80.0, 120.0))]
    results = {"serve": [{"loads": [first], "deadline": [], "ratio_rounds": rounds,
                          "rss_mb": 400.0, "pss_mb": 300.0, "ready_s": 1.0}],
               "plan": {"streams": [16]}, "frames": {"640x480": 200},
               "inprocess": [limit]}
    (ws_row,) = [row for row in report._target_rows(results) if row.startswith("| WS")]
    # 95 / 105, 84 / 90, 99 / 100: each over the mean of the limit slices around it
    assert "median of 3 slices (0.90, 0.93, 0.99) = **0.93x**" in ws_row
    assert ws_row.endswith("| pass |")  # the first pair (0.80x, minutes apart) is not judged
    assert "| 640x480 | HTTP | 110.0 | 50.0 | 100.0 | 0.48x |" in report._ratio_rounds(
        results["serve"][0])


def test_overhead_measures_the_stubbed_service_and_the_floor(tiny_model: Path, frames: Path,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "overhead"
    results = overhead.run(tiny_model, load_frames(frames), ["http", "ws"], streams=2, rounds=1,
                           seconds=0.3, warmup=0.1, out=out)
    assert set(results) == {(server, transport) for server in overhead.SERVERS
                            for transport in ("http", "ws")}
    for runs in results.values():
        assert len(runs) == 1 and runs[0]["fps"] > 0 and runs[0]["us_per_frame"] > 0
    # the service really ran with inference stubbed: red, green and blue frames all came out
    # as the stub's class 0, and were recorded by the real audit store
    with sqlite3.connect(out / "serve" / "data" / "audit.db") as db:
        assert db.execute("SELECT DISTINCT class_name FROM audit_decisions").fetchall() == [
            ("blue",)]
    assert "| serve | ws |" in overhead.table(results)
