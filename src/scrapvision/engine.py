"""onnxruntime inference for exported scrapvision models (no torch on this path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from scrapvision.decode import COLOUR_ORDERS
from scrapvision.modelmeta import INPUT_NAME, OUTPUT_NAME, ModelInfo


class ModelLoadError(ValueError):
    """The file is not a usable scrapvision model; the message says why."""


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of `logits / temperature`, numerically stable.

    Ufunc reductions rather than `.max()` / `.sum()`, whose Python wrappers cost more than
    the arithmetic on one frame's ten-odd logits."""
    z = np.divide(logits, np.float32(temperature), dtype=np.float32)
    z -= np.maximum.reduce(z, axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= np.add.reduce(z, axis=1, keepdims=True)
    return z


class Engine:
    """One onnxruntime session plus the model's own description of itself.

    `threads` is the intra-op thread count: on small CPUs several single-thread engines in
    separate processes beat one engine with many threads (see bench/RESULTS.md).
    """

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        self.path = Path(path)
        self.session = _open_session(self.path, threads)
        try:
            meta = self.session.get_modelmeta().custom_metadata_map
            self.info = ModelInfo.from_metadata(meta)
        except ValueError as exc:
            raise ModelLoadError(f"{self.path}: {exc}") from exc
        _check_signature(self.session, self.info, self.path)

    @property
    def input_size(self) -> tuple[int, int]:
        return self.info.input_size

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Raw logits for a uint8 batch (N, H, W, 3) in the model's colour order."""
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities (N, C) for a uint8 batch (N, H, W, 3)."""
        return softmax(self.logits(batch), self.info.temperature)


def _open_session(path: Path, threads: int) -> ort.InferenceSession:
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such model file")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises several unrelated types for bad files
        raise ModelLoadError(f"{path}: onnxruntime cannot load it: {exc}") from exc


def _check_signature(session: ort.InferenceSession, info: ModelInfo, path: Path) -> None:
    """Refuse a model whose graph does not match the contract in its own metadata."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
        raise ModelLoadError(
            f"{path}: expected input '{INPUT_NAME}' and output '{OUTPUT_NAME}', "
            f"found inputs {sorted(inputs)} and outputs {sorted(outputs)}"
        )
    if info.colour_order not in COLOUR_ORDERS:
        raise ModelLoadError(f"{path}: colour order {info.colour_order!r} is not one of "
                             f"{COLOUR_ORDERS}")
    image_input = inputs[INPUT_NAME]
    if image_input.type != "tensor(uint8)":
        raise ModelLoadError(f"{path}: input must be uint8, is {image_input.type}")
    shape = image_input.shape
    expected = [*info.input_size, 3]
    if len(shape) != 4 or [d for d in shape[1:]] != expected:
        raise ModelLoadError(
            f"{path}: input shape {shape} does not match (N, {expected[0]}, {expected[1]}, 3) "
            "from its metadata"
        )
    output_shape = outputs[OUTPUT_NAME].shape
    if len(output_shape) != 2:
        raise ModelLoadError(f"{path}: output shape {output_shape} is not (N, classes)")
    classes = output_shape[-1]
    if isinstance(classes, int) and classes != info.num_classes:
        raise ModelLoadError(
            f"{path}: graph outputs {classes} classes, metadata names {info.num_classes}"
        )
