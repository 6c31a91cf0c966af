"""ImageNet weights from the pip packages load strictly into timm's architecture."""

from __future__ import annotations

import importlib.resources

import pytest
import torch

from scrapvision.training.backbones import BACKBONES, create_model, get_backbone


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_package_weights_load_into_timm(name: str) -> None:
    spec = get_backbone(name)
    path = importlib.resources.files(spec.weights_package) / "models" / spec.weights_file
    original = torch.load(str(path), map_location="cpu", weights_only=True)
    model = create_model(name, num_classes=4)
    state = model.state_dict()
    torch.testing.assert_close(state["conv_stem.weight"], original["_conv_stem.weight"])
    torch.testing.assert_close(state["bn2.running_var"], original["_bn1.running_var"])
    last_block = max(int(k.split(".")[1]) for k in original if k.startswith("_blocks."))
    last_stage = len(model.blocks) - 1
    last_index = len(model.blocks[last_stage]) - 1
    torch.testing.assert_close(
        state[f"blocks.{last_stage}.{last_index}.conv_pwl.weight"],
        original[f"_blocks.{last_block}._project_conv.weight"])
    assert model.get_classifier().out_features == 4  # a new head, not ImageNet's


def test_unknown_backbone_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        create_model("resnet50", num_classes=2)
