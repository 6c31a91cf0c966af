"""Export a Lite0-shaped stand-in model (random weights) for benchmarking speed.

Benchmark numbers depend on the graph, not on its weights, so before a trained model is
shipped (or on a machine without one) this gives a model of the served shape: timm
`tf_efficientnet_lite0`, uint8 NHWC input with normalisation inside the graph, scrapvision
metadata, exactly as the export contract in docs/ARCHITECTURE.md says. Needs torch + timm
(the `[train]` extra); nothing is downloaded.

    python -m bench.standin --classes 10 --out bench/out/standin/model.onnx
"""

from __future__ import annotations

import argparse
from pathlib import Path

import onnx
import timm
import torch
from torch import nn

from bench.common import OUT
from scrapvision.modelmeta import INPUT_NAME, OUTPUT_NAME, ModelInfo
from scrapvision.training.backbones import BACKBONES

ARCHITECTURE = "tf_efficientnet_lite0"
DEFAULT_PATH = OUT / "standin" / "model.onnx"


class UInt8Input(nn.Module):
    """uint8 (N, H, W, 3) -> normalised float NCHW -> backbone logits, as the contract says."""

    def __init__(self, backbone: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.backbone = backbone
        mean_t, std_t = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std_t))
        self.register_buffer("shift", mean_t / std_t)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() * self.scale - self.shift
        return self.backbone(x)


def timm_architecture(info: ModelInfo) -> str:
    """The timm model a served model was built on, for the naive baseline to build too.

    An exported model's metadata names its training backbone ("efficientnet_lite2 (timm
    tf_efficientnet_lite2)"), a stand-in's the timm name; anything else (a test model) is
    compared with Lite0.
    """
    name = info.architecture.split(" ")[0]
    if name in BACKBONES:
        return BACKBONES[name].timm_arch
    return name if timm.is_model(name) else ARCHITECTURE


def build_backbone(num_classes: int, architecture: str = ARCHITECTURE) -> nn.Module:
    """Random-init timm model (no weights are downloaded); the naive baseline builds the same."""
    return timm.create_model(architecture, pretrained=False, num_classes=num_classes).eval()


def export_standin(path: Path, class_names: list[str], size: int = 224) -> Path:
    backbone = build_backbone(len(class_names))
    cfg = backbone.pretrained_cfg
    model = UInt8Input(backbone, cfg["mean"], cfg["std"]).eval()
    example = torch.zeros(2, size, size, 3, dtype=torch.uint8)  # 2: batch 1 would be specialised
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(model, (example,), str(path), input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], opset_version=18, dynamo=True,
                          dynamic_shapes={"images": {0: torch.export.Dim("N", max=256)}},
                          external_data=False)
    info = ModelInfo(name="standin", version="v0", class_names=class_names,
                     input_size=(size, size), colour_order="RGB", architecture=ARCHITECTURE,
                     mean=list(cfg["mean"]), std=list(cfg["std"]))
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, info.to_metadata())
    onnx.save(proto, str(path))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=10, help="number of output classes")
    parser.add_argument("--size", type=int, default=224, help="square input side")
    parser.add_argument("--out", type=Path, default=DEFAULT_PATH)
    args = parser.parse_args(argv)
    if args.classes < 2:
        parser.error("--classes must be at least 2")
    names = [f"class{i}" for i in range(args.classes)]
    print(f"stand-in model -> {export_standin(args.out, names, args.size)}")


if __name__ == "__main__":
    main()
