"""Engine: loads only models that honour the contract, and predicts calibrated probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from tinymodel import CLASSES, build_tiny_model, colour_frame

from scrapvision.decode import decode_frame
from scrapvision.engine import Engine, ModelLoadError, softmax
from scrapvision.modelmeta import ModelInfo


def set_metadata(path: Path, **entries: str) -> Path:
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    props.update(entries)
    del model.metadata_props[:]
    helper.set_model_props(model, props)
    onnx.save(model, str(path))
    return path


def mean_model(path: Path, input_type: int = TensorProto.UINT8, input_name: str = "images",
               output_shape: list | None = None) -> Path:
    """Graph `logits = mean over H, W` with a valid tiny metadata block, varied for errors."""
    graph = helper.make_graph(
        [helper.make_node("Cast", [input_name], ["f"], to=TensorProto.FLOAT),
         helper.make_node("ReduceMean", ["f", "axes"], ["logits"], keepdims=0)],
        "mean",
        [helper.make_tensor_value_info(input_name, input_type, ["N", 32, 32, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                       ["N", 3] if output_shape is None else output_shape)],
        initializer=[helper.make_tensor("axes", TensorProto.INT64, [2], [1, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    info = ModelInfo(name="mean", version="v1", class_names=CLASSES, input_size=(32, 32))
    helper.set_model_props(model, info.to_metadata())
    onnx.save(model, str(path))
    return path


def test_loads_metadata_and_predicts_the_dominant_colour(tiny_model: Path) -> None:
    engine = Engine(tiny_model)
    assert engine.info.ref == "tiny:v1"
    assert engine.input_size == (32, 32)
    batch = np.stack([decode_frame(colour_frame(c), engine.input_size, "BGR") for c in CLASSES])
    probs = engine.predict(batch)
    assert probs.shape == (3, 3) and probs.dtype == np.float32
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert probs.argmax(axis=1).tolist() == [0, 1, 2]


def test_predict_applies_the_stored_temperature(tmp_path: Path) -> None:
    path = set_metadata(build_tiny_model(tmp_path / "m.onnx", sharpness=0.01),
                        temperature="4.0")
    engine = Engine(path)
    batch = np.stack([decode_frame(colour_frame("grey"), (32, 32))] * 1)
    batch[0, ..., 2] = 200  # reddish grey
    logits = engine.logits(batch)
    assert np.allclose(engine.predict(batch), softmax(logits, 4.0))
    assert engine.predict(batch).max() < softmax(logits).max()  # softer than T=1


def test_softmax_is_stable_for_large_logits() -> None:
    probs = softmax(np.array([[1000.0, 0.0, -1000.0]], np.float32))
    assert np.isfinite(probs).all() and probs[0, 0] == pytest.approx(1.0)


@pytest.mark.parametrize(("content", "message"), [
    (b"", "cannot load"),
    (b"this is not a protobuf at all" * 10, "cannot load"),
])
def test_corrupt_file_is_refused(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=message):
        Engine(path)


def test_truncated_onnx_is_refused(tmp_path: Path, tiny_model: Path) -> None:
    data = tiny_model.read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="cut.onnx"):
        Engine(path)


def test_missing_file_and_directory_are_refused(tmp_path: Path) -> None:
    for path in (tmp_path / "nope.onnx", tmp_path):
        with pytest.raises(ModelLoadError, match="no such model file"):
            Engine(path)


def test_onnx_without_scrapvision_metadata_is_refused(tmp_path: Path, tiny_model: Path) -> None:
    model = onnx.load(str(tiny_model))
    del model.metadata_props[:]
    onnx.save(model, str(tmp_path / "plain.onnx"))
    with pytest.raises(ModelLoadError, match="not a scrapvision model"):
        Engine(tmp_path / "plain.onnx")


@pytest.mark.parametrize(("entries", "message"), [
    ({"class_names": "[not json"}, "plain.onnx"),
    ({"temperature": "0"}, "temperature"),
    ({"input_size": "[32]"}, "input_size"),
    ({"colour_order": "rgb"}, "colour order 'rgb'"),
])
def test_broken_metadata_is_refused(tmp_path: Path, entries: dict, message: str) -> None:
    path = set_metadata(build_tiny_model(tmp_path / "plain.onnx"), **entries)
    with pytest.raises(ModelLoadError, match=message):
        Engine(path)


def test_wrong_input_shape_is_refused(tmp_path: Path) -> None:
    path = build_tiny_model(tmp_path / "m.onnx", size=(32, 32), input_size_meta=(64, 64))
    with pytest.raises(ModelLoadError, match="does not match"):
        Engine(path)


def test_class_count_mismatch_is_refused(tmp_path: Path) -> None:
    path = set_metadata(build_tiny_model(tmp_path / "m.onnx"),
                        class_names='["a", "b", "c", "d"]')
    with pytest.raises(ModelLoadError, match="3 classes, metadata names 4"):
        Engine(path)


def test_float_input_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="must be uint8"):
        Engine(mean_model(tmp_path / "m.onnx", input_type=TensorProto.FLOAT))


def test_wrong_input_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="expected input 'images'"):
        Engine(mean_model(tmp_path / "m.onnx", input_name="pixels"))


def test_output_that_is_not_a_batch_of_logits_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="output"):
        Engine(mean_model(tmp_path / "m.onnx", output_shape=[]))
