"""Helpers shared by the bench scripts: frames on disk, latency percentiles, machine facts."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"  # gitignored: frames, stand-in models, raw results
FRAMES = OUT / "frames"
FRAME_SIZES = ((640, 480), (1280, 720))  # (width, height) of the generated frames


def size_name(width: int, height: int) -> str:
    return f"{width}x{height}"


def load_frames(folder: Path, limit: int | None = None) -> list[bytes]:
    """Encoded JPEG/PNG frames of `folder`, sorted by name, read into memory once."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise SystemExit(f"no .jpg/.png frames in {folder}: "
                         "run `python -m bench.make_frames` first")
    return [p.read_bytes() for p in files[:limit]]


def latency_summary(latencies_ms: list[float] | np.ndarray) -> dict[str, float]:
    """p50/p95/p99/max in milliseconds; NaN when nothing was measured."""
    values = np.asarray(latencies_ms, dtype=np.float64)
    if values.size == 0:
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan"),
                "max_ms": float("nan")}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99),
            "max_ms": float(values.max())}


def parse_cpus(text: str | None) -> set[int] | None:
    """'0', '0,1' or '0-3' -> a CPU set for sched_setaffinity / taskset; None = no pinning."""
    if not text:
        return None
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def pin_to(cpus: set[int] | None) -> None:
    """Restrict this process (and the threads it starts later) to `cpus`."""
    if cpus:
        os.sched_setaffinity(0, cpus)


# Vector extensions that decide how fast onnxruntime (int8 above all) and PyTorch run.
SIMD_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def cpu_model_and_simd() -> tuple[str, list[str]]:
    """CPU model name and which of `SIMD_FLAGS` it has (Linux; elsewhere the platform name)."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    return model, [flag for flag in SIMD_FLAGS if flag in flags]


def machine_info() -> dict[str, Any]:
    """What a reader needs to compare numbers between machines."""
    model, simd = cpu_model_and_simd()
    import onnxruntime  # noqa: PLC0415 - only the version is wanted here

    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "host": platform.node(),
        "cpu": model,
        "simd": simd,
        "cpu_count": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def default_model() -> Path:
    """The shipped ewaste model when it exists, else the stand-in from `bench.standin`."""
    from scrapvision.registry import ModelRegistry, RegistryError  # noqa: PLC0415

    try:
        return ModelRegistry(REPO / "models").model_path("ewaste")
    except RegistryError:
        return OUT / "standin" / "model.onnx"


def append_json(path: Path | None, record: dict[str, Any]) -> None:
    """Append `record` as one JSON line to `path` (the scripts' `--json`); None: nothing."""
    if path is not None:
        with path.open("a") as out:
            out.write(json.dumps(record) + "\n")
