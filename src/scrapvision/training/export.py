"""Export a training run to the serving contract: one self-describing ONNX file.

The graph takes what the service has after `decode_frame`: a uint8 batch (N, H, W, 3) in
OpenCV's BGR order. Colour flip, float conversion, normalisation and NHWC->NCHW happen
inside the graph with the very `normalise` used in training, so the two cannot drift.
Before the file is registered, onnxruntime's output is checked against PyTorch on real
images from the run's data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from scrapvision.datasets import Sample
from scrapvision.modelmeta import INPUT_NAME, OUTPUT_NAME, ModelInfo
from scrapvision.registry import ModelRegistry
from scrapvision.training.backbones import create_model, get_backbone
from scrapvision.training.data import MEAN, STD, decode_sample, normalise
from scrapvision.training.trainer import (
    BEST_CHECKPOINT, RUN_FILE, TrainingError, load_run_config, run_samples,
)

PARITY_TOLERANCE = 1e-4
PARITY_IMAGES = 8
MAX_MODEL_BYTES = 25 * 1024 * 1024
COLOUR_ORDER = "BGR"


class ExportError(RuntimeError):
    """The exported graph is not fit to ship (parity, size); nothing was registered."""


@dataclass(frozen=True)
class ExportResult:
    name: str
    version: str
    path: Path  # the registered model.onnx
    max_abs_diff: float
    promoted: bool


class ServingGraph(nn.Module):
    """uint8 (N, H, W, 3) BGR -> logits; optionally the mean over the image and its mirror."""

    def __init__(self, model: nn.Module, tta_flip: bool = False) -> None:
        super().__init__()
        self.model = model
        self.tta_flip = tta_flip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        rgb = images.permute(0, 3, 1, 2).flip(1)  # NHWC BGR -> NCHW RGB
        x = normalise(rgb)
        logits = self.model(x)
        if self.tta_flip:
            logits = (logits + self.model(x.flip(3))) / 2
        return logits


def load_trained_model(run_dir: Path) -> tuple[nn.Module, dict]:
    """The run's best weights in eval mode, plus run.json."""
    config = load_run_config(run_dir)
    checkpoint_path, run_path = run_dir / BEST_CHECKPOINT, run_dir / RUN_FILE
    if not checkpoint_path.is_file() or not run_path.is_file():
        raise TrainingError(f"{run_dir} has no {BEST_CHECKPOINT}: train it first")
    run = json.loads(run_path.read_text())
    model = create_model(config.model.backbone, len(run["classes"]), pretrained=False)
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    model.load_state_dict(checkpoint["model"])
    return model.eval(), run


def parity_batch(samples: list[Sample], size: int, count: int = PARITY_IMAGES) -> np.ndarray:
    """Real frames, decoded as the service decodes them (BGR), preferring val rows."""
    ordered = sorted(samples, key=lambda s: s.split != "val")[:count]
    return np.stack([decode_sample(s, size, COLOUR_ORDER) for s in ordered])


def export_onnx(graph: ServingGraph, example: np.ndarray, path: Path, info: ModelInfo) -> None:
    """Dynamo export, opset 18, dynamic batch, scrapvision metadata; one self-contained file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.onnx.export(
        graph, (torch.from_numpy(example),), dynamo=True, opset_version=18,
        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        dynamic_shapes={"images": {0: batch}}, verbose=False,
    )
    program.optimize()
    model = program.model_proto
    onnx.helper.set_model_props(model, info.to_metadata())
    onnx.checker.check_model(model)
    onnx.save(model, str(path), save_as_external_data=False)


def max_parity_difference(path: Path, graph: ServingGraph, images: np.ndarray) -> float:
    """Largest |onnxruntime - PyTorch| logit over the batch (and a single-image batch)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in (images, images[:1]):
        onnx_logits = session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        with torch.no_grad():
            torch_logits = graph(torch.from_numpy(batch)).numpy()
        worst = max(worst, float(np.abs(onnx_logits - torch_logits).max()))
    return worst


def export_run(run_dir: Path, *, name: str | None = None, models_dir: Path = Path("models"),
               tolerance: float = PARITY_TOLERANCE) -> ExportResult:
    """Export the run's best model, check it, and register it as a new version of `name`.

    The first version of a name is promoted right away (there is nothing to compare it
    with); later versions wait for `scrapvision models promote` or `retrain --promote`.
    """
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    model, run = load_trained_model(run_dir)
    graph = ServingGraph(model, config.model.tta_flip).eval()
    size = run["input_size"]
    name = name or config.name
    registry = ModelRegistry(models_dir)
    version = registry.next_version(name)
    backbone = get_backbone(config.model.backbone)
    info = ModelInfo(
        name=name, version=version, class_names=run["classes"], input_size=(size, size),
        colour_order=COLOUR_ORDER, mean=[MEAN] * 3, std=[STD] * 3,
        architecture=f"{backbone.name} (timm {backbone.timm_arch})"
                     + (" + horizontal-flip TTA" if config.model.tta_flip else ""),
        data_fingerprint=run["data_fingerprint"],
        metrics={"val_top1": run["best"]["val_acc"], "val_loss": run["best"]["val_loss"],
                 "best_epoch": run["best"]["epoch"], "run": run_dir.name},
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    images = parity_batch(run_samples(config, run_dir), size)
    out = run_dir / "export" / "model.onnx"
    export_onnx(graph, images[:2], out, info)
    difference = max_parity_difference(out, graph, images)
    if difference > tolerance:
        raise ExportError(f"ONNX and PyTorch differ by {difference:.2e} > {tolerance:.0e} "
                          f"on real images; {out} was not registered")
    if out.stat().st_size > MAX_MODEL_BYTES:
        raise ExportError(f"{out} is {out.stat().st_size / 2**20:.1f} MB, over the "
                          f"{MAX_MODEL_BYTES / 2**20:.0f} MB limit")
    first = not registry.versions(name)
    registry.add(name, out, version)
    if first:
        registry.promote(name, version)
    return ExportResult(name, version, registry.model_path(name, version), difference, first)
