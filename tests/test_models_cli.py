"""`scrapvision evaluate` and `scrapvision models ...` through the real CLI app."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from colour_data import write_colour_dataset
from tinymodel import build_tiny_model
from typer.testing import CliRunner

from scrapvision.cli import app
from scrapvision.engine import Engine
from scrapvision.registry import ModelRegistry

runner = CliRunner()


@pytest.fixture
def data(tmp_path: Path) -> list[str]:
    split_csv = write_colour_dataset(tmp_path / "data")
    return ["--data", str(split_csv.parent), "--split-csv", str(split_csv)]


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_evaluate_registry_model_writes_card_next_to_it(models_dir: Path,
                                                        data: list[str]) -> None:
    result = invoke("evaluate", "tiny:v1", *data, "--models-dir", models_dir,
                    "--target-purity", "0.95")
    assert result.exit_code == 0, result.output
    card = json.loads((models_dir / "tiny" / "v1" / "card.json").read_text())
    assert card["target_purity"] == 0.95
    assert f"{card['metrics']['top1']:.2%}" in result.output
    assert Engine(models_dir / "tiny" / "v1" / "model.onnx").info.temperature == \
        card["metrics"]["temperature"]


def test_evaluate_onnx_path_into_out_dir(tmp_path: Path, tiny_model: Path,
                                         data: list[str]) -> None:
    result = invoke("evaluate", tiny_model, *data, "--out", tmp_path / "report",
                    "--note", "plant frames, line 3")
    assert result.exit_code == 0, result.output
    assert "plant frames, line 3" in (tmp_path / "report" / "card.md").read_text()


@pytest.mark.parametrize(("model", "message"), [
    ("missing.onnx", "does not exist"),
    ("nosuch", "no model named 'nosuch'"),
    ("tiny:v9", "has no version 'v9'"),
])
def test_evaluate_bad_model_reference_is_a_clear_error(models_dir: Path, data: list[str],
                                                       model: str, message: str) -> None:
    result = invoke("evaluate", model, *data, "--models-dir", models_dir)
    assert result.exit_code == 1
    assert message in result.output


def test_evaluate_missing_data_root_is_a_clear_error(models_dir: Path, tmp_path: Path) -> None:
    result = invoke("evaluate", "tiny", "--data", tmp_path / "nowhere",
                    "--models-dir", models_dir)
    assert result.exit_code == 1
    assert "is not a directory" in result.output


def test_list_shows_versions_active_and_card_numbers(models_dir: Path, tmp_path: Path,
                                                     data: list[str]) -> None:
    registry = ModelRegistry(models_dir)
    registry.add("tiny", build_tiny_model(tmp_path / "v2.onnx", version="v2"))
    assert invoke("evaluate", "tiny:v1", *data, "--models-dir", models_dir).exit_code == 0
    result = invoke("models", "list", "--models-dir", models_dir)
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[2].strip(): line for line in result.output.splitlines()
            if line.count("│") > 3 and "tiny" in line}
    assert set(rows) == {"v1", "v2"}
    top1 = registry.card("tiny", "v1")["metrics"]["top1"]
    assert "*" in rows["v1"] and f"{top1:.2%}" in rows["v1"]
    assert "*" not in rows["v2"] and "%" not in rows["v2"]  # no card yet


def test_list_shows_what_it_can_and_names_damaged_files(models_dir: Path,
                                                        tmp_path: Path) -> None:
    registry = ModelRegistry(models_dir)
    registry.add("other", build_tiny_model(tmp_path / "other.onnx", name="other"))
    (models_dir / "tiny" / "active.json").write_text("{broken")
    (models_dir / "other" / "v1" / "card.json").write_text("{broken")
    result = invoke("models", "list", "--models-dir", models_dir)
    assert result.exit_code == 1
    rows = [line for line in result.output.splitlines() if line.count("│") > 3]
    assert any("tiny" in row for row in rows) and any("other" in row for row in rows)
    assert "active.json is damaged" in result.output
    assert "card.json is not a model card" in result.output
    assert "Traceback" not in result.output


def test_list_empty_registry(tmp_path: Path) -> None:
    result = invoke("models", "list", "--models-dir", tmp_path / "empty")
    assert result.exit_code == 0
    assert "no models" in result.output


def test_compare_prints_both_and_a_verdict(models_dir: Path, tmp_path: Path,
                                           data: list[str]) -> None:
    blunt = build_tiny_model(tmp_path / "blunt.onnx", version="v2", sharpness=0.01)
    result = invoke("models", "compare", "tiny:v1", blunt, *data, "--models-dir", models_dir)
    assert result.exit_code == 0, result.output
    assert "tiny:v1" in result.output and "tiny:v2" in result.output
    # same argmax and, once temperature-scaled, the same probabilities: a tie
    assert "score the same" in result.output
    assert not (models_dir / "tiny" / "v1" / "card.json").exists()  # compare writes nothing


def test_promote_and_rollback(models_dir: Path, tmp_path: Path) -> None:
    registry = ModelRegistry(models_dir)
    registry.add("tiny", build_tiny_model(tmp_path / "v2.onnx", version="v2"))
    result = invoke("models", "promote", "tiny", "v2", "--models-dir", models_dir)
    assert result.exit_code == 0, result.output
    assert "has no card" in result.output
    assert registry.active("tiny") == "v2"
    result = invoke("models", "rollback", "tiny", "--models-dir", models_dir)
    assert result.exit_code == 0
    assert registry.active("tiny") == "v1"
    result = invoke("models", "rollback", "tiny", "--models-dir", models_dir)
    assert result.exit_code == 1 and "no earlier promoted version" in result.output


def test_promote_unknown_version_is_refused(models_dir: Path) -> None:
    result = invoke("models", "promote", "tiny", "v7", "--models-dir", models_dir)
    assert result.exit_code == 1
    assert "has no version 'v7'" in result.output
    assert ModelRegistry(models_dir).active("tiny") == "v1"


def test_python_dash_m_runs_the_cli() -> None:
    result = subprocess.run([sys.executable, "-m", "scrapvision", "models", "--help"],
                            capture_output=True, text=True, check=True)
    assert "promote" in result.stdout and "rollback" in result.stdout
