"""int8 static quantisation of a served model: accuracy and speed against float32.

Calibrates on frames of the `train` split (decoded exactly as served), writes the int8
model to the gitignored `bench/out/`, and reports top-1 of both models on the `test`
split and their in-process frames/s. The int8 model is worth shipping only if it is
faster AND loses at most `--max-drop` points of top-1; this script never replaces a
shipped model, it says whether to.

    python -m bench.quantize --model models/ewaste/v1/model.onnx \
        --data ../shared/datasets/ewaste10
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from bench.common import FRAMES, OUT, append_json, default_model
from bench.inprocess import Job, measure
from scrapvision.datasets import Sample, load_samples
from scrapvision.decode import decode_frame
from scrapvision.engine import Engine
from scrapvision.evaluation import predict_split
from scrapvision.modelmeta import INPUT_NAME

MAX_TOP1_DROP_POINTS = 0.5


class SplitReader(CalibrationDataReader):
    """Feeds calibration frames one at a time, decoded the way the service decodes them."""

    def __init__(self, samples: list[Sample], size: tuple[int, int], colour_order: str):
        self._batches: Iterator[dict[str, np.ndarray]] = (
            {INPUT_NAME: decode_frame(s.path.read_bytes(), size, colour_order)[np.newaxis]}
            for s in samples
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize(model: Path, out: Path, calibration: list[Sample]) -> Path:
    """Static int8 (QDQ, per-channel weights) with the float model's metadata kept."""
    engine = Engine(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    prepared = out.with_suffix(".prepared.onnx")
    quant_pre_process(str(model), str(prepared))
    quantize_static(str(prepared), str(out),
                    SplitReader(calibration, engine.input_size, engine.info.colour_order),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    prepared.unlink()
    proto = onnx.load(str(out))
    onnx.helper.set_model_props(proto, engine.info.to_metadata())
    onnx.save(proto, str(out))
    return out


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
    train = [s for s in samples if s.split == "train"]
    test = [s for s in samples if s.split == "test"]
    calibration = random.Random(seed).sample(train, min(calibration_count, len(train)))
    quantize(model, out, calibration)
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
