"""`scrapvision models quantize`: int8 as a new registered version, evaluated and compared."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from colour_data import write_colour_dataset
from tinymodel import build_tiny_model, colour_frame
from typer.testing import CliRunner

from scrapvision import quantize as quantize_module
from scrapvision.cli import app
from scrapvision.datasets import load_samples
from scrapvision.decode import decode_frame
from scrapvision.engine import Engine
from scrapvision.evaluation import store_temperature
from scrapvision.modelmeta import ModelInfo
from scrapvision.quantize import calibration_rows, quantize_model
from scrapvision.registry import ModelRegistry

runner = CliRunner()
TRAIN_ROWS = 12  # colour_data default: 4 train images per class, 3 classes


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def make_registry(root: Path, sharpness: float = 0.1) -> Path:
    """A registry with one active float model 'tiny' v1."""
    registry = ModelRegistry(root / "models")
    registry.add("tiny", build_tiny_model(root / "build" / "tiny.onnx", sharpness=sharpness))
    registry.promote("tiny", "v1")
    return registry.root


def data_args(split_csv: Path) -> list[str]:
    return ["--data", str(split_csv.parent), "--split-csv", str(split_csv)]


def quantize_fresh(tmp_path: Path, split_csv: Path, ref: str, *options: object,
                   status: int = 0) -> tuple[ModelRegistry, str]:
    """Quantise `ref` in a new registry holding tiny v1; (registry, output unwrapped)."""
    root = make_registry(tmp_path)
    result = invoke("models", "quantize", ref, *data_args(split_csv), "--models-dir", root,
                    *options)
    assert result.exit_code == status, result.output
    return ModelRegistry(root), " ".join(result.output.split())


@pytest.fixture(scope="module")
def split_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_colour_dataset(tmp_path_factory.mktemp("colour") / "data")


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory, split_csv: Path):
    """One quantisation without --promote, shared by the tests that only inspect it."""
    root = make_registry(tmp_path_factory.mktemp("quantized"))
    result = invoke("models", "quantize", "tiny", *data_args(split_csv), "--models-dir", root)
    return root, result


def test_int8_version_is_registered_with_the_source_metadata(quantized) -> None:
    root, result = quantized
    assert result.exit_code == 0, result.output
    registry = ModelRegistry(root)
    assert registry.versions("tiny") == ["v1", "v2"]
    assert registry.active("tiny") == "v1"  # no --promote
    source = Engine(registry.model_path("tiny", "v1")).info
    int8 = Engine(registry.model_path("tiny", "v2")).info
    assert not source.is_quantized and int8.is_quantized
    assert int8.version == "v2" and int8.name == "tiny"
    assert int8.quantization["source_version"] == "v1"
    assert int8.quantization["calibration_split"] == "train"
    # all train rows (the default asks for 200), and not one val or test row
    assert int8.quantization["calibration_frames"] == TRAIN_ROWS
    for field in ("class_names", "input_size", "colour_order", "mean", "std", "architecture",
                  "data_fingerprint", "metrics"):
        assert getattr(int8, field) == getattr(source, field), field
    graph_ops = {n.op_type for n in onnx.load(str(registry.model_path("tiny", "v2"))).graph.node}
    assert "QuantizeLinear" in graph_ops and "DequantizeLinear" in graph_ops


def test_int8_card_says_int8_and_from_which_version(quantized) -> None:
    root, result = quantized
    folder = root / "tiny" / "v2"
    card = json.loads((folder / "card.json").read_text())
    assert card["model"]["version"] == "v2"
    assert card["model"]["quantization"]["source_version"] == "v1"
    markdown = (folder / "card.md").read_text()
    assert "**int8**" in markdown and "quantised from version v1" in markdown
    assert (folder / "confusion_matrix.png").is_file() and (folder / "reliability.png").is_file()
    # evaluate refits the temperature on the int8 model's val logits and stores it in the file
    assert Engine(folder / "model.onnx").info.temperature == card["metrics"]["temperature"]
    assert card["temperature_stored"] is True


def test_comparison_is_printed(quantized) -> None:
    _, result = quantized
    out = " ".join(result.output.split())
    assert "tiny:v2 (int8)" in out and "tiny:v1" in out
    assert "McNemar" in out  # the compare_evaluations verdict
    assert "drop 0.00 points (max 0.5)" in out
    assert "v1 stays active; promote with `scrapvision models promote tiny v2`" in out


def test_int8_predicts_like_the_float_model(quantized, split_csv: Path) -> None:
    root, _ = quantized
    registry = ModelRegistry(root)
    source, int8 = (Engine(registry.model_path("tiny", v)) for v in ("v1", "v2"))
    samples = load_samples([split_csv.parent], split_csv)
    frames = [decode_frame(s.path.read_bytes(), source.input_size, "BGR") for s in samples]
    frames += [decode_frame(colour_frame(c), source.input_size, "BGR")
               for c in ("blue", "green", "red")]
    batch = np.stack(frames)
    agree = (source.predict(batch).argmax(1) == int8.predict(batch).argmax(1)).mean()
    assert agree >= 0.95, agree
    pure = np.stack(frames[-3:])
    assert list(int8.predict(pure).argmax(1)) == [0, 1, 2]


def test_promote_within_max_drop(tmp_path: Path, split_csv: Path) -> None:
    registry, out = quantize_fresh(tmp_path, split_csv, "tiny:v1", "--promote",
                                   "--calibration", "5")
    assert registry.active("tiny") == "v2"
    assert registry.history("tiny") == ["v1", "v2"]
    assert Engine(registry.model_path("tiny")).info.quantization["calibration_frames"] == 5
    assert "active version is now v2 (was v1)" in out


def test_promote_refused_when_max_drop_cannot_be_met(tmp_path: Path, split_csv: Path) -> None:
    registry, out = quantize_fresh(tmp_path, split_csv, "tiny", "--promote",
                                   "--max-drop", "-100")
    assert registry.versions("tiny") == ["v1", "v2"]  # registered, evaluated ...
    assert registry.active("tiny") == "v1"  # ... but not promoted
    assert registry.history("tiny") == ["v1"]
    assert "not promoted: the drop of 0.00 points is over --max-drop -100" in out


def test_promote_refused_on_a_real_drop(tmp_path: Path, split_csv: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A quantisation that breaks the model (logits inverted) must not be promoted."""
    broken = build_tiny_model(tmp_path / "broken.onnx", sharpness=-0.1)
    real = quantize_module.quantize_model

    def breaking(source, out, calibration, *, version=None):
        return real(broken, out, calibration, version=version)

    monkeypatch.setattr(quantize_module, "quantize_model", breaking)
    registry, out = quantize_fresh(tmp_path, split_csv, "tiny", "--promote")
    assert registry.active("tiny") == "v1" and registry.versions("tiny") == ["v1", "v2"]
    assert "not promoted" in out and "tiny:v1 is better" in out


@pytest.mark.parametrize(("ref", "message"), [
    ("nosuch", "no model named 'nosuch'"),
    ("tiny:v9", "has no version 'v9'"),
    ("../tiny", "invalid model name"),
])
def test_unknown_model_or_version_exits_2(tmp_path: Path, split_csv: Path, ref: str,
                                          message: str) -> None:
    registry, out = quantize_fresh(tmp_path, split_csv, ref, status=2)
    assert out.startswith("error:") and out.count("error:") == 1 and message in out
    assert registry.versions("tiny") == ["v1"]


def test_missing_data_root_exits_2(tmp_path: Path) -> None:
    registry, out = quantize_fresh(tmp_path, tmp_path / "nowhere" / "split.csv", "tiny",
                                   status=2)
    assert out.startswith("error:") and out.count("error:") == 1
    assert "is not a directory" in out
    assert registry.versions("tiny") == ["v1"]


def test_data_without_train_rows_exits_2_before_writing(tmp_path: Path) -> None:
    split_csv = write_colour_dataset(tmp_path / "data", per_split={"val": 5, "test": 5})
    registry, out = quantize_fresh(tmp_path, split_csv, "tiny", status=2)
    assert "error: no train rows" in out
    assert registry.versions("tiny") == ["v1"]


def test_already_int8_source_exits_2(quantized, split_csv: Path) -> None:
    root, _ = quantized
    result = invoke("models", "quantize", "tiny:v2", *data_args(split_csv), "--models-dir", root)
    assert result.exit_code == 2, result.output
    assert "cannot be quantised: it is int8, quantised from version v1" in \
        " ".join(result.output.split())
    assert ModelRegistry(root).versions("tiny") == ["v1", "v2"]


def test_int8_graph_without_the_marker_is_refused_too(tmp_path: Path, split_csv: Path) -> None:
    """A model quantised elsewhere (e.g. by the bench) and registered by hand."""
    root = make_registry(tmp_path)
    samples = load_samples([split_csv.parent], split_csv)
    int8 = tmp_path / "int8.onnx"
    quantize_model(ModelRegistry(root).model_path("tiny"), int8, calibration_rows(samples, 4))
    proto = onnx.load(str(int8))
    info = ModelInfo.from_metadata({p.key: p.value for p in proto.metadata_props})
    onnx.helper.set_model_props(proto, info.model_copy(update={"quantization": {}})
                                .to_metadata())
    onnx.save(proto, str(int8))
    ModelRegistry(root).add("tiny", int8)
    result = invoke("models", "quantize", "tiny:v2", *data_args(split_csv), "--models-dir", root)
    assert result.exit_code == 2, result.output
    assert "already has quantised operators" in " ".join(result.output.split())


def test_quantize_model_carries_the_temperature_over(tmp_path: Path, split_csv: Path) -> None:
    source = build_tiny_model(tmp_path / "tiny.onnx")
    store_temperature(source, 1.75)
    samples = load_samples([split_csv.parent], split_csv)
    info = quantize_model(source, tmp_path / "out" / "int8.onnx", calibration_rows(samples, 3),
                          version="v7")
    loaded = Engine(tmp_path / "out" / "int8.onnx").info
    assert loaded == info
    assert loaded.temperature == 1.75 and loaded.quantization["source_temperature"] == 1.75
    assert loaded.version == "v7" and loaded.quantization["source_version"] == "v1"
    assert loaded.quantization["calibration_frames"] == 3
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["int8.onnx"]


def test_calibration_rows_come_from_train_only(split_csv: Path) -> None:
    samples = load_samples([split_csv.parent], split_csv)
    rows = calibration_rows(samples, 1000)
    assert len(rows) == TRAIN_ROWS and {s.split for s in rows} == {"train"}
    assert calibration_rows(samples, 5, seed=1) == calibration_rows(samples, 5, seed=1)
    assert len(calibration_rows(samples, 5)) == 5


def test_metadata_without_quantization_reads_as_float() -> None:
    info = ModelInfo(name="m", version="v1", class_names=["a"], input_size=(8, 8))
    meta = info.to_metadata()
    assert ModelInfo.from_metadata(meta) == info
    del meta["quantization"]  # exported before the field existed
    assert not ModelInfo.from_metadata(meta).is_quantized
    marked = info.model_copy(update={"quantization": {"source_version": "v1"}})
    assert ModelInfo.from_metadata(marked.to_metadata()).quantization == {"source_version": "v1"}


def test_quantize_module_never_imports_torch() -> None:
    code = ("import sys, scrapvision.quantize, scrapvision.models_cli; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
