"""int8 static quantisation of a registered model, shipped as a new version of it.

`scrapvision models quantize NAME[:VERSION]` quantises a float version (onnxruntime
`quantize_static`, QDQ, per-channel int8 weights, uint8 activations), calibrating on frames
of the `train` split only, decoded exactly as the service decodes them. The int8 graph is
registered as the next version of the same name with the source's metadata plus
`ModelInfo.quantization` (from which version, how many calibration frames), evaluated like
`scrapvision evaluate` (card next to it; the temperature is refitted on its own val logits
and stored, so the card's thresholds hold for it), and compared with the source on the same
test rows. It becomes active only when asked and when top-1 drops by at most `max_drop`
points.

Needs onnxruntime, onnx and numpy only (the `eval` extra): never torch.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
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

from scrapvision.datasets import Sample
from scrapvision.engine import Engine
from scrapvision.evaluation import (
    DEFAULT_TARGET_PURITY,
    Evaluation,
    compare_evaluations,
    decode_sample,
    run_evaluation,
    write_evaluation,
)
from scrapvision.modelmeta import INPUT_NAME, ModelInfo
from scrapvision.registry import ModelRegistry

QUANTIZATION_TYPE = "static QDQ, per-channel int8 weights, uint8 activations"
CALIBRATION_SPLIT = "train"  # never val (calibration, thresholds) nor test (reporting)
DEFAULT_CALIBRATION_FRAMES = 200
MAX_TOP1_DROP_POINTS = 0.5  # the performance issue's rule for keeping int8
# Operators only a quantised graph has: a source made outside this command is refused too.
_QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
                            "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"})


class QuantizeError(ValueError):
    """The model or the data cannot be quantised (already int8, no train rows...)."""


class CalibrationReader(CalibrationDataReader):
    """Feeds calibration frames one at a time, decoded the way the service decodes them."""

    def __init__(self, engine: Engine, samples: Sequence[Sample]) -> None:
        self._batches: Iterator[dict[str, np.ndarray]] = (
            {INPUT_NAME: decode_sample(engine, s)[np.newaxis]} for s in samples
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def calibration_rows(samples: Sequence[Sample], count: int = DEFAULT_CALIBRATION_FRAMES,
                     seed: int = 0) -> list[Sample]:
    """Up to `count` rows drawn at random (seeded) from the train split, never val or test."""
    if count < 1:
        raise QuantizeError(f"need at least one calibration frame, got {count}")
    train = [s for s in samples if s.split == CALIBRATION_SPLIT]
    if not train:
        raise QuantizeError(f"no {CALIBRATION_SPLIT} rows in the data: calibration frames come "
                            f"from the {CALIBRATION_SPLIT} split only (give a split.csv with it)")
    return random.Random(seed).sample(train, min(count, len(train)))


def quantized_from(path: Path, info: ModelInfo) -> str | None:
    """Why the model at `path` is already quantised, or None for a float model."""
    if info.is_quantized:
        return f"it is int8, quantised from version {info.quantization.get('source_version')}"
    graph = onnx.load(str(path), load_external_data=False).graph
    found = sorted({node.op_type for node in graph.node} & _QUANTIZED_OPS)
    return f"its graph already has quantised operators ({', '.join(found)})" if found else None


def float_engine(path: Path) -> Engine:
    """The model at `path` opened, refused with QuantizeError when it is already quantised."""
    engine = Engine(path)
    reason = quantized_from(path, engine.info)
    if reason:
        raise QuantizeError(f"{engine.info.ref} cannot be quantised: {reason}; "
                            "quantise its float source version instead")
    return engine


def float_source(models_dir: Path, name: str, version: str | None = None) -> tuple[str, Path]:
    """(version, model path) of `name:version` (default: active), refused when not float."""
    registry = ModelRegistry(models_dir)
    version = version or registry.active(name)
    path = registry.model_path(name, version)
    float_engine(path)
    return version, path


def quantize_model(source: Path, out: Path, calibration: Sequence[Sample], *,
                   version: str | None = None) -> ModelInfo:
    """Write the int8 model of `source` to `out`; returns the metadata written into it.

    The metadata is the source's (class names, input size, colour order, temperature, data
    fingerprint, ...) with `version` (default: the source's), a new `created` and the
    `quantization` record. The result is checked to load in `Engine` before it is returned.
    """
    source, out = Path(source), Path(out)
    engine = float_engine(source)
    if not calibration:
        raise QuantizeError("no calibration frames")
    info = engine.info.model_copy(update={
        "version": version or engine.info.version,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quantization": {
            "type": QUANTIZATION_TYPE, "source_version": engine.info.version,
            "calibration_frames": len(calibration), "calibration_split": CALIBRATION_SPLIT,
            "source_temperature": engine.info.temperature,
        },
    })
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared))
        quantize_static(str(prepared), str(out), CalibrationReader(engine, calibration),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    proto = onnx.load(str(out))
    onnx.helper.set_model_props(proto, info.to_metadata())
    onnx.save(proto, str(out))
    Engine(out)  # ModelLoadError here rather than in the service
    return info


@dataclass(frozen=True)
class QuantizeResult:
    name: str
    source_version: str
    version: str  # the new int8 version
    path: Path
    info: ModelInfo
    source: Evaluation
    int8: Evaluation
    comparison: dict[str, Any]  # compare_evaluations(int8, source)
    drop_points: float  # source top-1 minus int8 top-1 on the test rows, in points
    max_drop: float
    promoted: bool

    @property
    def within_max_drop(self) -> bool:
        return self.drop_points <= self.max_drop


def quantize_version(models_dir: Path, name: str, version: str | None,
                     samples: Sequence[Sample], *,
                     calibration: int = DEFAULT_CALIBRATION_FRAMES,
                     max_drop: float = MAX_TOP1_DROP_POINTS, promote: bool = False,
                     target_purity: float | None = None, note: str | None = None,
                     data_roots: Sequence[Path] = (), seed: int = 0,
                     progress: bool = False) -> QuantizeResult:
    """Quantise `name:version` (default: active) into a new version, evaluate and compare.

    Everything that can refuse the input (unknown model, int8 source, data without train,
    val or test rows, labels the model does not know) does so before anything is written.
    `target_purity` and `note` default to those of the source's card when it was made on the
    same data, so both versions' thresholds answer the same question.
    """
    registry = ModelRegistry(models_dir)
    source_version, source_path = float_source(models_dir, name, version)
    rows = calibration_rows(samples, calibration, seed)
    source_card = registry.card(name, source_version) or {}
    target_purity = target_purity or source_card.get("target_purity", DEFAULT_TARGET_PURITY)
    source = run_evaluation(source_path, samples, target_purity=target_purity,
                            data_roots=data_roots, progress=progress)
    if note is None and source_card.get("data", {}).get("fingerprint") == \
            source.card["data"]["fingerprint"]:
        note = source_card["data"]["note"]

    new_version = registry.next_version(name)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "model.onnx"
        info = quantize_model(source_path, staged, rows, version=new_version)
        registry.add(name, staged, new_version)
    path = registry.model_path(name, new_version)
    int8 = run_evaluation(path, samples, target_purity=target_purity, note=note,
                          data_roots=data_roots, progress=progress)
    write_evaluation(int8, path)  # card next to it, refitted temperature stored in it

    refs = (f"{name}:{new_version}", f"{name}:{source_version}")
    comparison = compare_evaluations(int8, source, refs)
    # from counts, so float noise never decides a promotion
    drop = 100 * int(source.test_correct.sum() - int8.test_correct.sum()) / len(
        source.test_correct)
    promoted = promote and drop <= max_drop
    if promoted:
        registry.promote(name, new_version)
    return QuantizeResult(name, source_version, new_version, path, info, source, int8,
                          comparison, drop, max_drop, promoted)
