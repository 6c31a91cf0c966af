"""int8 static quantisation of a served model: accuracy and speed against float32.

Calibrates on frames of the `train` split (decoded exactly as served), writes the int8
model to the gitignored `bench/out/`, and reports top-1 of both models on the `test`
split and their in-process frames/s. The int8 model is worth shipping only if it is
faster AND loses at most `--max-drop` points of top-1; this script never replaces a
shipped model, it says whether to (`scrapvision models quantize` registers one, using the
same quantisation code, `scrapvision.quantize`).

    python -m bench.quantize --model models/ewaste/v1/model.onnx \
        --data ../shared/datasets/ewaste10
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.common import FRAMES, OUT, append_json, default_model
from bench.inprocess import Job, measure
from scrapvision.datasets import Sample, load_samples
from scrapvision.engine import Engine
from scrapvision.evaluation import predict_split
from scrapvision.quantize import MAX_TOP1_DROP_POINTS, calibration_rows, quantize_model


def top1(model: Path, samples: list[Sample]) -> float:
    """Top-1 accuracy in percent, through the serving decode path and onnxruntime."""
    outputs = predict_split(Engine(model), samples)
    return float((outputs.logits.argmax(axis=1) == outputs.labels).mean() * 100)


def frames_per_second(model: Path, frames_dir: Path, seconds: float) -> float:
    """In-process frames/s in the 2x1 layout, as the service runs by default here."""
    job = Job(model, frames_dir, threads=1, batch=1, reduced_decode=True, seconds=seconds,
              cpus=None, max_frames=None)
    return measure(job, processes=2)["fps"]


def compare(model: Path, data: Path, split_csv: Path, out: Path, calibration_count: int,
            frames_dir: Path, seconds: float, max_drop: float = MAX_TOP1_DROP_POINTS,
            seed: int = 0) -> dict[str, Any]:
    samples = load_samples([data], split_csv)
    test = [s for s in samples if s.split == "test"]
    calibration = calibration_rows(samples, calibration_count, seed)
    quantize_model(model, out, calibration)
    fp32_top1, int8_top1 = top1(model, test), top1(out, test)
    fp32_fps = frames_per_second(model, frames_dir, seconds)
    int8_fps = frames_per_second(out, frames_dir, seconds)
    drop = fp32_top1 - int8_top1
    return {
        "model": str(model), "int8_model": str(out), "test_rows": len(test),
        "calibration_rows": len(calibration),
        "fp32_top1": fp32_top1, "int8_top1": int8_top1, "top1_drop_points": drop,
        "fp32_fps": fp32_fps, "int8_fps": int8_fps, "speedup": int8_fps / fp32_fps,
        "fp32_mb": model.stat().st_size / 1e6, "int8_mb": out.stat().st_size / 1e6,
        "keep_int8": drop <= max_drop and int8_fps > fp32_fps,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--data", type=Path, required=True,
                        help="ImageFolder root of the model's data")
    parser.add_argument("--split-csv", type=Path, default=None, help="default: DATA/split.csv")
    parser.add_argument("--out", type=Path, default=OUT / "int8" / "model.int8.onnx")
    parser.add_argument("--calibration", type=int, default=200, help="train frames to calibrate on")
    parser.add_argument("--frames", type=Path, default=FRAMES / "640x480",
                        help="frames for the speed test")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--max-drop", type=float, default=MAX_TOP1_DROP_POINTS,
                        help="largest acceptable top-1 drop in points")
    parser.add_argument("--json", type=Path, default=None, help="append the result as a JSON line")
    args = parser.parse_args(argv)
    model = args.model or default_model()
    split_csv = args.split_csv or args.data / "split.csv"
    for path in (model, split_csv):
        if not path.is_file():
            parser.error(f"{path} does not exist")
    result = compare(model, args.data, split_csv, args.out, args.calibration, args.frames,
                     args.seconds, args.max_drop)
    print(f"top-1 fp32 {result['fp32_top1']:.2f}% int8 {result['int8_top1']:.2f}% "
          f"(drop {result['top1_drop_points']:.2f} points); "
          f"{result['fp32_fps']:.1f} -> {result['int8_fps']:.1f} frames/s; "
          f"keep int8: {result['keep_int8']}")
    append_json(args.json, {"bench": "quantize", **result})


if __name__ == "__main__":
    main()
