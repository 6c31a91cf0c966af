"""Training configuration as data: a YAML file, validated, overridable from the command line.

`training/<name>.yaml` holds the exact recipe of a shipped model; `--set optim.lr=3e-4`
changes one value for one run, and the run folder keeps the merged result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from scrapvision.configsection import ConfigSection


class DataConfig(ConfigSection):
    roots: list[Path] = Field(min_length=1, description="ImageFolder roots, merged")
    split_csv: Path | None = Field(None, description="file,label,split[,group]; made when absent")
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)


class ModelConfig(ConfigSection):
    backbone: str = "efficientnet_lite0"
    # The backbones downsample by 32: a smaller side leaves less than one feature pixel.
    input_size: int | None = Field(None, ge=32,
                                   description="square input side; default: the backbone's")
    pretrained: bool = True
    drop_rate: float = Field(0.2, ge=0, lt=1)
    drop_path_rate: float = Field(0.0, ge=0, lt=1)
    tta_flip: bool = Field(False, description="export: mean logits of the image and its mirror")


class AugmentConfig(ConfigSection):
    """Conveyor frames: items at any position, orientation and under changing light."""

    scale_min: float = Field(0.5, gt=0, le=1, description="random resized crop area range")
    hflip: float = Field(0.5, ge=0, le=1)
    vflip: float = Field(0.5, ge=0, le=1)
    rotation: float = Field(15.0, ge=0, le=180, description="degrees, either way")
    brightness: float = Field(0.3, ge=0)
    contrast: float = Field(0.3, ge=0)
    saturation: float = Field(0.3, ge=0)
    hue: float = Field(0.02, ge=0, le=0.5)
    blur: float = Field(0.2, ge=0, le=1, description="probability of a Gaussian blur")
    mixup: float = Field(0.0, ge=0, description=(
        "Beta alpha of mixup (0: off); batches are mixed where the trainable part starts: "
        "the frozen trunk's output, or the pixels when nothing is frozen"))
    cutmix: float = Field(0.0, ge=0, description="Beta alpha of CutMix (0: off); with mixup, "
                                                 "each batch gets one of the two")


class OptimConfig(ConfigSection):
    probe_epochs: int = Field(0, ge=0, description="train the head on frozen features first")
    probe_lr: float = Field(3e-3, gt=0)
    epochs: int = Field(15, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0, description="peak learning rate of the head")
    backbone_lr_scale: float = Field(0.1, gt=0, le=1, description="backbone lr = lr * this")
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    ema_decay: float | None = Field(None, gt=0, lt=1, description="EMA of weights; off when null")
    freeze_stages: int = Field(0, ge=0, description="stem + this many block stages stay frozen")
    freeze_bn: bool = Field(True, description=(
        "BatchNorm keeps its ImageNet statistics (affine still learns): batch statistics of "
        "small batches shift the features so far that a probed head starts from chance"))
    cached_views: int = Field(0, ge=0, description=(
        "precompute the frozen trunk's output for this many views per image (the first "
        "unaugmented) and train only the rest on them; 0: augment every step"))
    patience: int = Field(5, ge=1, description="epochs without val improvement before stopping")
    max_steps_per_epoch: int | None = Field(None, ge=1, description="cap, for smoke runs")


class TrainConfig(ConfigSection):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", description="model name in the registry")
    seed: int = 0
    threads: int = Field(2, ge=1)
    runs_dir: Path = Path("runs")
    data: DataConfig
    model: ModelConfig = ModelConfig()
    augment: AugmentConfig = AugmentConfig()
    optim: OptimConfig = OptimConfig()

    @model_validator(mode="after")
    def _known_backbone(self) -> "TrainConfig":
        from scrapvision.training.backbones import get_backbone  # noqa: PLC0415 (torch-heavy)

        get_backbone(self.model.backbone)
        return self

    @property
    def input_size(self) -> int:
        from scrapvision.training.backbones import get_backbone  # noqa: PLC0415

        if self.model.input_size is not None:
            return self.model.input_size
        return get_backbone(self.model.backbone).input_size


class ConfigError(ValueError):
    """The configuration file or an override is invalid; the message says which key."""


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply `section.key=value` (value parsed as YAML, so 1e-3, true, [a, b] work) in place."""
    key, sep, value = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"override '{assignment}' is not key=value")
    *parents, leaf = key.strip().split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{assignment}': '{part}' is not a section")
    node[leaf] = yaml.safe_load(value)


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """The file's top-level mapping (empty file: {}); a list or scalar there is refused here,
    where the message can say so, not later as a type error inside an override."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections "
                          f"(name, data, model, ...), not a {type(raw).__name__}")
    return raw


def load_config(path: Path | None, overrides: list[str] = (), base: dict | None = None
                ) -> TrainConfig:
    """Read YAML (or start from `base`), apply `key=value` overrides, validate."""
    raw: dict[str, Any] = dict(base or {})
    if path is not None:
        raw = read_yaml_mapping(Path(path))
    for assignment in overrides:
        apply_override(raw, assignment)
    try:
        return TrainConfig.model_validate(raw)
    except (ValidationError, ValueError) as exc:
        raise ConfigError(f"invalid training config{f' {path}' if path else ''}:\n{exc}") from exc


def dump_config(config: TrainConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
