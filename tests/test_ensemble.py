"""`scrapvision models ensemble`: versions joined into one graph, registered, judged on val."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from colour_data import write_colour_dataset
from tinymodel import CLASSES, build_tiny_model, colour_frame
from typer.testing import CliRunner

from scrapvision.cli import app
from scrapvision.decode import decode_frame
from scrapvision.engine import Engine
from scrapvision.ensemble import write_ensemble
from scrapvision.registry import ModelRegistry

runner = CliRunner()
BLUE, GREEN = CLASSES.index("blue"), CLASSES.index("green")


def member_weights(channel: int, wrong_class: int) -> np.ndarray:
    """The colour model, but `channel` also votes for `wrong_class`, more than for its own:
    every frame of that colour is misread."""
    weights = np.eye(3, dtype=np.float32) * 0.1
    weights[channel, wrong_class] = 0.15
    return weights


def registry_with(root: Path, *models: dict) -> ModelRegistry:
    """A registry holding 'tiny' v1, v2, ... built with `models[i]` as keyword arguments."""
    registry = ModelRegistry(root / "models")
    for index, options in enumerate(models, start=1):
        built = build_tiny_model(root / "build" / f"v{index}.onnx", version=f"v{index}",
                                 **options)
        registry.add("tiny", built)
    registry.promote("tiny", "v1")
    return registry


def ensemble(registry: ModelRegistry, split_csv: Path, *args: str):
    result = runner.invoke(app, ["models", "ensemble", "tiny", *args,
                                 "--data", str(split_csv.parent), "--split-csv", str(split_csv),
                                 "--models-dir", str(registry.root)])
    return result, " ".join(result.output.split())


@pytest.fixture(scope="module")
def split_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_colour_dataset(tmp_path_factory.mktemp("colour") / "data")


@pytest.fixture()
def complementary(tmp_path: Path) -> ModelRegistry:
    """v1 misreads every blue frame as green, v2 every green frame as blue: their mean reads
    both right, as the plain colour model would."""
    return registry_with(tmp_path, {"weights": member_weights(BLUE, GREEN)},
                         {"weights": member_weights(GREEN, BLUE)})


def test_ensemble_graph_averages_its_members_logits(complementary: ModelRegistry,
                                                    tmp_path: Path, split_csv: Path) -> None:
    from scrapvision.datasets import load_samples

    paths = [complementary.model_path("tiny", v) for v in ("v1", "v2")]
    out = tmp_path / "ensemble.onnx"
    info = write_ensemble(paths, out, load_samples([split_csv.parent], split_csv),
                          version="v3")
    frames = np.stack([decode_frame(colour_frame(c), (32, 32), "BGR") for c in CLASSES])
    members = [Engine(path).logits(frames) for path in paths]
    np.testing.assert_allclose(Engine(out).logits(frames), np.mean(members, axis=0),
                               rtol=1e-6)
    assert info.version == "v3" and info.ensemble["combine"] == "mean of logits"
    assert [m["version"] for m in info.ensemble["members"]] == ["v1", "v2"]


def test_ensemble_is_registered_evaluated_and_promoted_when_it_beats_every_member(
        complementary: ModelRegistry, split_csv: Path) -> None:
    result, output = ensemble(complementary, split_csv, "v1", "v2", "--promote")
    assert result.exit_code == 0, result.output
    assert complementary.versions("tiny") == ["v1", "v2", "v3"]
    assert complementary.active("tiny") == "v3"
    record = Engine(complementary.model_path("tiny", "v3")).info.ensemble
    member_val = [m["val_top1"] for m in record["members"]]
    assert max(member_val) < 0.6 < record["val_top1"]  # each member loses a whole class
    card = complementary.card("tiny", "v3")
    assert card["model"]["ensemble"] == record
    assert card["metrics"]["top1"] > 0.6
    markdown = (complementary.version_dir("tiny", "v3") / "card.md").read_text()
    assert "Ensemble (mean of logits) of v1" in markdown
    assert "active version is now v3 (was v1)" in output


def test_ensemble_no_better_than_a_member_is_not_promoted(tmp_path: Path,
                                                          split_csv: Path) -> None:
    registry = registry_with(tmp_path, {}, {})  # two copies of one model: nothing to gain
    result, output = ensemble(registry, split_csv, "v1", "v2", "--promote")
    assert result.exit_code == 0, result.output
    assert registry.versions("tiny") == ["v1", "v2", "v3"]
    assert registry.active("tiny") == "v1"
    assert "does not beat every member" in output


@pytest.mark.parametrize(("models", "args", "message"), [
    (({}, {"size": (24, 24)}), ("v1", "v2"), "differ in input_size"),
    (({},), ("v1",), "at least two versions"),
    (({}, {}), ("v1", "v1"), "named twice"),
    (({}, {}), ("v1", "v9"), "has no version 'v9'"),
])
def test_versions_that_cannot_be_joined_are_refused_and_nothing_is_registered(
        tmp_path: Path, split_csv: Path, models: tuple[dict, ...], args: tuple[str, ...],
        message: str) -> None:
    registry = registry_with(tmp_path, *models)
    before = registry.versions("tiny")
    result, output = ensemble(registry, split_csv, *args)
    assert result.exit_code == 2
    assert message in output
    assert registry.versions("tiny") == before


@pytest.mark.parametrize(("per_split", "message"), [
    ({"train": 4, "test": 4}, "no val rows"),
    ({"train": 4, "val": 4}, "no test rows"),
])
def test_data_without_val_or_test_rows_is_refused_and_nothing_is_registered(
        complementary: ModelRegistry, tmp_path: Path, per_split: dict[str, int],
        message: str) -> None:
    split_csv = write_colour_dataset(tmp_path / "data", per_split=per_split)
    result, output = ensemble(complementary, split_csv, "v1", "v2")
    assert result.exit_code == 2
    assert message in output
    assert complementary.versions("tiny") == ["v1", "v2"]

