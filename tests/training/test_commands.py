"""`scrapvision train` / `retrain` from the command line on tiny generated frames."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import yaml
from tinymodel import build_tiny_model
from tinytrain import tiny_config
from typer.testing import CliRunner

from scrapvision.cli import app
from scrapvision.registry import ModelRegistry
from scrapvision.training import retrain as retrain_module
from scrapvision.training.config import dump_config
from scrapvision.training.export import ExportResult

runner = CliRunner()


@pytest.fixture
def config_file(colour_data: Path, tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    dump_config(tiny_config(colour_data, tmp_path / "runs"), path)
    return path


def _run_dir(output: str) -> Path:
    return Path(output.strip().splitlines()[-1].removeprefix("run folder: "))


def test_train_command_applies_overrides(config_file: Path) -> None:
    result = runner.invoke(app, ["train", "--config", str(config_file), "--no-progress",
                                 "--set", "optim.lr=2e-4", "--set", "augment.vflip=0"])
    assert result.exit_code == 0, result.output
    run_dir = _run_dir(result.output)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["optim"]["lr"] == pytest.approx(2e-4)
    assert saved["augment"]["vflip"] == 0
    assert json.loads((run_dir / "metrics.json").read_text())[0]["epoch"] == 1


def test_train_command_rejects_a_bad_override(config_file: Path) -> None:
    result = runner.invoke(app, ["train", "--config", str(config_file),
                                 "--set", "optim.lrr=1"])
    assert result.exit_code == 2
    assert "lrr" in result.output


@pytest.mark.slow  # two trainings, three exports, four evaluations
def test_retrain_promotes_only_when_asked_and_better(config_file: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    args = ["retrain", "--config", str(config_file), "--models-dir", str(models),
            "--no-progress"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    registry = ModelRegistry(models)
    assert registry.active("tiny") == "v1"
    assert registry.card("tiny", "v1")["model"]["version"] == "v1"

    second = runner.invoke(app, [*args, "--set", "seed=1"])  # no --promote
    assert second.exit_code == 0, second.output
    assert registry.active("tiny") == "v1"
    assert "v1 stays active" in second.output
    assert registry.card("tiny", "v2") is not None


def _must_not_train(*args, **kwargs) -> Path:
    raise AssertionError("retrain trained on data it cannot evaluate")


def _split_without(colour_data: Path, tmp_path: Path, split: str) -> Path:
    """The colour data's split.csv with its `split` rows left out."""
    rows = (colour_data / "split.csv").read_text().splitlines()
    path = tmp_path / f"no_{split}.csv"
    path.write_text("\n".join(row for row in rows if f",{split}," not in row) + "\n")
    return path


@pytest.mark.parametrize("split", ["val", "test"])
def test_retrain_refuses_data_it_cannot_evaluate_before_training(
        config_file: Path, colour_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        split: str) -> None:
    monkeypatch.setattr(retrain_module, "train", _must_not_train)
    models = tmp_path / "models"
    result = runner.invoke(app, [
        "retrain", "--config", str(config_file), "--models-dir", str(models), "--no-progress",
        "--set", f"data.split_csv={_split_without(colour_data, tmp_path, split)}"])
    assert result.exit_code == 2, result.output
    assert f"no '{split}' rows" in result.output
    assert not ModelRegistry(models).versions("tiny")


def _with_classes(path: Path, classes: list[str]) -> Path:
    """Rewrite the class names in a tiny model's metadata (the graph stays 3 outputs)."""
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == "class_names":
            prop.value = json.dumps(classes)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def fake_pipeline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """retrain without torch: `train` makes an empty run folder, `export_run` registers the
    tiny colour model (classes blue/green/red) as the next version; evaluation is real."""
    def fake_train(config, run_dir=None, *, progress: bool = True) -> Path:
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        return run_dir

    def fake_export(run_dir: Path, *, models_dir: Path, **kwargs) -> ExportResult:
        registry = ModelRegistry(models_dir)
        version = registry.next_version("tiny")
        built = build_tiny_model(tmp_path / "build" / f"{version}.onnx", version=version)
        registry.add("tiny", built, version)
        return ExportResult("tiny", version, registry.model_path("tiny", version), 0.0, False)

    monkeypatch.setattr(retrain_module, "train", fake_train)
    monkeypatch.setattr(retrain_module, "export_run", fake_export)


def _registry_with_v1(tmp_path: Path, classes: list[str] | None = None) -> Path:
    models = tmp_path / "models"
    registry = ModelRegistry(models)
    path = build_tiny_model(tmp_path / "build" / "v1.onnx")
    registry.add("tiny", _with_classes(path, classes) if classes else path)
    registry.promote("tiny", "v1")
    return models


@pytest.mark.usefixtures("fake_pipeline")
def test_retrain_hint_is_a_promote_command_that_works(config_file: Path, tmp_path: Path) -> None:
    models = _registry_with_v1(tmp_path)
    result = runner.invoke(app, ["retrain", "--config", str(config_file),
                                 "--models-dir", str(models), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "`scrapvision models promote tiny v2`" in result.output
    hint = result.output.split("`")[1].split()
    promoted = runner.invoke(app, [*hint[1:], "--models-dir", str(models)])
    assert promoted.exit_code == 0, promoted.output
    assert ModelRegistry(models).active("tiny") == "v2"


@pytest.mark.usefixtures("fake_pipeline")
def test_retrain_with_other_classes_reports_the_new_version_and_never_promotes(
        config_file: Path, tmp_path: Path) -> None:
    models = _registry_with_v1(tmp_path, ["blue", "green", "grey"])  # the data has red
    result = runner.invoke(app, ["retrain", "--config", str(config_file),
                                 "--models-dir", str(models), "--no-progress", "--promote"])
    assert result.exit_code == 0, result.output
    assert "tiny:v2: test top-1" in result.output
    assert "not comparable with v1 (classes differ): not promoted" in result.output
    registry = ModelRegistry(models)
    assert registry.active("tiny") == "v1"
    assert registry.card("tiny", "v2")["model"]["class_names"] == ["blue", "green", "red"]
