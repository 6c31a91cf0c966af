"""The contract between an exported model and everything that serves it.

Class names, input size, colour order and normalisation travel *inside* the ONNX file as
metadata, so training and serving read one source of truth. The graph itself takes a
uint8 batch (N, H, W, 3) in the colour order below and does normalisation and the layout
change internally; the only thing the serving side does is decode and resize.

`quantization` is empty for a float model. An int8 model made by `scrapvision models
quantize` keeps its float source's metadata (temperature refitted on val by its evaluation)
and records there {type, source_version, calibration_frames, calibration_split,
source_temperature}; readers that predate the field ignore it. `ensemble` is likewise empty
but for a graph made by `scrapvision models ensemble`, and says what it joins.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field

FORMAT_VERSION = "1"
INPUT_NAME = "images"
OUTPUT_NAME = "logits"

# Keys whose values are JSON-encoded in the ONNX string->string metadata map.
_JSON_KEYS = ("class_names", "input_size", "mean", "std", "metrics", "quantization",
              "ensemble")


class ModelInfo(BaseModel):
    """What a served model tells about itself through its ONNX metadata."""

    name: str
    version: str
    class_names: list[str]
    input_size: tuple[int, int] = Field(description="(height, width) the graph expects")
    colour_order: str = "RGB"
    architecture: str = ""
    mean: list[float] = Field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = Field(default_factory=lambda: [0.5, 0.5, 0.5])
    temperature: float = Field(1.0, gt=0, description="softmax temperature fitted on val")
    data_fingerprint: str = ""
    metrics: dict[str, Any] = Field(default_factory=dict)
    created: str = ""
    quantization: dict[str, Any] = Field(
        default_factory=dict,
        description="empty for a float model; for an int8 one (`scrapvision models quantize`): "
                    "{type, source_version, calibration_frames, calibration_split, "
                    "source_temperature, ...}")

    ensemble: dict[str, Any] = Field(
        default_factory=dict,
        description="empty for a single model; for one made by `scrapvision models "
                    "ensemble`: {combine, members: [{version, architecture, quantized, "
                    "val_top1}], val_top1}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def is_quantized(self) -> bool:
        return bool(self.quantization)

    @property
    def ref(self) -> str:
        """Human-readable `name:version` used in logs, decisions and metrics."""
        return f"{self.name}:{self.version}"

    def to_metadata(self) -> dict[str, str]:
        """Flatten to the string map ONNX `metadata_props` can hold."""
        out = {"scrapvision.format": FORMAT_VERSION}
        for key, value in self.model_dump().items():
            out[key] = json.dumps(value) if key in _JSON_KEYS else str(value)
        return out

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> "ModelInfo":
        """Parse the metadata map; raises ValueError when it is not a scrapvision model."""
        if meta.get("scrapvision.format") != FORMAT_VERSION:
            raise ValueError(
                "not a scrapvision model: ONNX metadata lacks scrapvision.format="
                f"{FORMAT_VERSION} (export it with `scrapvision export`)"
            )
        fields = {k: v for k, v in meta.items() if k in cls.model_fields}
        for key in _JSON_KEYS:
            if key in fields:
                fields[key] = json.loads(fields[key])
        return cls.model_validate(fields)
