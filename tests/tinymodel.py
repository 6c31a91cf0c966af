"""A tiny, deterministic scrapvision ONNX model built without torch, for fast tests.

It honours the full export contract (uint8 NHWC input named `images`, `logits` output,
scrapvision metadata) and classifies a frame by its dominant colour, so tests can make
frames whose class they know: `colour_frame("red")` is class "red" with high confidence.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper

from scrapvision.modelmeta import INPUT_NAME, OUTPUT_NAME, ModelInfo

CLASSES = ["blue", "green", "red"]  # BGR channel order, as decoded by OpenCV
BGR = {"blue": (255, 0, 0), "green": (0, 255, 0), "red": (0, 0, 255), "grey": (128, 128, 128)}


def build_tiny_model(path: Path, name: str = "tiny", version: str = "v1",
                     size: tuple[int, int] = (32, 32), sharpness: float = 0.1,
                     input_size_meta: tuple[int, int] | None = None,
                     weights: np.ndarray | None = None) -> Path:
    """Write the model to `path`; `sharpness` scales logits (higher = more confident).

    `weights` (3 x 3, channel -> class; default `sharpness` x identity) makes a model with
    chosen mistakes."""
    h, w = size
    if weights is None:
        weights = np.eye(3, dtype=np.float32) * sharpness
    nodes = [
        helper.make_node("Cast", [INPUT_NAME], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["f", "axes"], ["mean"], keepdims=0),
        helper.make_node("MatMul", ["mean", "W"], [OUTPUT_NAME]),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["N", h, w, 3])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", 3])],
        initializer=[
            helper.make_tensor("axes", TensorProto.INT64, [2], [1, 2]),
            helper.make_tensor("W", TensorProto.FLOAT, [3, 3], weights.flatten().tolist()),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    info = ModelInfo(name=name, version=version, class_names=CLASSES,
                     input_size=input_size_meta or size, colour_order="BGR",
                     architecture="tiny-colour-test")
    helper.set_model_props(model, info.to_metadata())
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def colour_frame(colour: str, width: int = 64, height: int = 48, fmt: str = ".jpg") -> bytes:
    """Encoded frame of one solid colour, e.g. `colour_frame("red")`."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[:] = BGR[colour]
    ok, buf = cv2.imencode(fmt, image)
    assert ok
    return buf.tobytes()
