"""Train -> resume -> export on tiny generated frames (Lite0 at 64x64, two steps)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from tinytrain import tiny_config

from scrapvision.datasets import DatasetError, Sample
from scrapvision.engine import Engine
from scrapvision.modelmeta import ModelInfo
from scrapvision.registry import ModelRegistry
from scrapvision.training.data import normalise
from scrapvision.training.export import (
    ExportError, export_run, load_trained_model, parity_batch,
)
from scrapvision.training.backbones import create_model
from scrapvision.training.trainer import TrainingError, load_run_config, run_samples, train

RUN_FILES = ("config.yaml", "split.csv", "run.json", "metrics.csv", "metrics.json",
             "curves.png", "best.pt", "last.pt")


@pytest.fixture(scope="module")
def trained_run(colour_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny run shared by the tests below (training is the slow part)."""
    return train(tiny_config(colour_data, tmp_path_factory.mktemp("runs")), progress=False)


def test_run_folder_has_everything(trained_run: Path, colour_data: Path) -> None:
    for name in RUN_FILES:
        assert (trained_run / name).is_file(), name
    run = json.loads((trained_run / "run.json").read_text())
    assert run["classes"] == ["blue", "green", "red"]
    assert run["counts"] == {"train": 24, "val": 9, "test": 9}
    assert run["best"]["weights"] in ("probe", "model", "ema")
    assert 0 <= run["best"]["val_acc_flip_tta"] <= 1
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics] == [1]
    assert metrics[0]["ema_val_acc"] is not None
    given = (colour_data / "split.csv").read_text().splitlines()
    assert sorted((trained_run / "split.csv").read_text().splitlines()) == sorted(given)


def test_resume_continues_from_last_checkpoint(trained_run: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    first_epoch = json.loads((run / "metrics.json").read_text())[0]
    config = load_run_config(run, ["optim.epochs=2"])
    train(config, run, progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics] == [1, 2]
    assert metrics[0] == first_epoch  # epoch 1 was not redone
    assert torch.load(run / "last.pt", weights_only=False)["step"] == 4
    assert json.loads((run / "run.json").read_text())["best"]["epoch"] in (0, 1, 2)


def test_export_registers_a_checked_self_describing_model(trained_run: Path,
                                                          tmp_path: Path) -> None:
    models = tmp_path / "models"
    result = export_run(trained_run, models_dir=models)
    assert (result.name, result.version, result.promoted) == ("tiny", "v1", True)
    assert result.max_abs_diff <= 1e-4
    registry = ModelRegistry(models)
    assert registry.active("tiny") == "v1"
    assert result.path.stat().st_size < 25 * 2**20

    engine = Engine(result.path)
    info = engine.info
    run = json.loads((trained_run / "run.json").read_text())
    assert info.class_names == ["blue", "green", "red"]
    assert (info.input_size, info.colour_order) == ((64, 64), "BGR")
    assert info.data_fingerprint == run["data_fingerprint"]
    assert info.metrics["val_top1"] == run["best"]["val_acc"]
    assert "tf_efficientnet_lite0" in info.architecture and "TTA" in info.architecture
    model_proto = onnx.load(str(result.path))
    assert {o.domain: o.version for o in model_proto.opset_import}[""] == 18

    # BGR uint8 in, colour flip + normalisation inside: equals PyTorch on the RGB image
    bgr = parity_batch(run_samples(load_run_config(trained_run), trained_run), 64, count=3)
    model, _ = load_trained_model(trained_run)
    rgb = torch.from_numpy(bgr[..., ::-1].copy()).permute(0, 3, 1, 2)
    with torch.no_grad():
        x = normalise(rgb)
        expected = ((model(x) + model(x.flip(3))) / 2).numpy()
    np.testing.assert_allclose(engine.logits(bgr), expected, atol=1e-4)

    second = export_run(trained_run, models_dir=models)
    assert (second.version, second.promoted) == ("v2", False)
    assert registry.active("tiny") == "v1"
    assert ModelInfo.from_metadata(
        Engine(second.path).session.get_modelmeta().custom_metadata_map).version == "v2"


@pytest.mark.slow  # one more export (~20 s on a busy CPU)
def test_export_refuses_a_model_that_breaks_parity(trained_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="differ"):
        export_run(trained_run, models_dir=tmp_path / "models", tolerance=-1.0)
    assert not ModelRegistry(tmp_path / "models").versions("tiny")


def test_cached_views_train_only_the_unfrozen_rest(colour_data: Path, tmp_path: Path) -> None:
    config = tiny_config(colour_data, tmp_path / "runs",
                         ["optim.freeze_stages=5", "optim.cached_views=3", "optim.epochs=2"])
    torch.manual_seed(config.seed)  # the same random init as the run's
    initial = create_model("efficientnet_lite0", 3, pretrained=False).state_dict()
    run = train(config, progress=False)
    trained = torch.load(run / "last.pt", weights_only=False)["model"]
    assert torch.equal(trained["blocks.4.0.conv_pw.weight"], initial["blocks.4.0.conv_pw.weight"])
    assert not torch.equal(trained["blocks.5.0.conv_pw.weight"],
                           initial["blocks.5.0.conv_pw.weight"])
    assert [row["epoch"] for row in json.loads((run / "metrics.json").read_text())] == [1, 2]


def test_cached_views_need_a_frozen_trunk(colour_data: Path, tmp_path: Path) -> None:
    config = tiny_config(colour_data, tmp_path / "runs",
                         ["optim.freeze_stages=0", "optim.cached_views=2"])
    with pytest.raises(TrainingError, match="freeze_stages"):
        train(config, progress=False)


@pytest.mark.parametrize("batch_size", [8, 7])
def test_mixup_mixes_even_batches_and_leaves_odd_ones_as_plain_smoothed_targets(
        colour_data: Path, tmp_path: Path, batch_size: int) -> None:
    def trained(overrides: list[str]) -> dict[str, torch.Tensor]:
        config = tiny_config(colour_data, tmp_path / "runs" / str(len(overrides)),
                             [f"optim.batch_size={batch_size}", "optim.ema_decay=null",
                              *overrides])
        return torch.load(train(config, progress=False) / "last.pt", weights_only=False)["model"]

    plain = trained([])
    mixed = trained(["augment.mixup=0.8", "augment.cutmix=1.0"])
    same = all(torch.allclose(plain[k], mixed[k], atol=1e-4) for k in plain)  # sums reorder
    # timm's Mixup pairs rows with their mirror: an odd batch is not mixed, and its smoothed
    # soft targets give the same loss as plain label smoothing
    assert same == (batch_size % 2 == 1)


@pytest.fixture
def corrupt_data(colour_data: Path, tmp_path: Path) -> Path:
    """The colour data with one train image's bytes replaced by a truncated JPEG."""
    root = Path(shutil.copytree(colour_data, tmp_path / "data"))
    (root / "green" / "train_3.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    return root


def test_a_corrupt_image_is_named_when_training(corrupt_data: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"green/train_3\.jpg"):
        train(tiny_config(corrupt_data, tmp_path / "runs"), progress=False)


def test_a_corrupt_image_is_named_when_exporting(corrupt_data: Path) -> None:
    bad = Sample(corrupt_data / "green" / "train_3.jpg", "green", "val", "g")
    with pytest.raises(DatasetError, match=r"green/train_3\.jpg"):
        parity_batch([bad], 64)
