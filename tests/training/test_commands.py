"""`scrapvision train` / `retrain` from the command line on tiny generated frames."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tinytrain import tiny_config
from typer.testing import CliRunner

from scrapvision.cli import app
from scrapvision.registry import ModelRegistry
from scrapvision.training.config import dump_config

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
