"""Training config: YAML as data, every key overridable from the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from scrapvision.training.config import ConfigError, dump_config, load_config

YAML = """
name: scrap
data:
  roots: [data/scrap]
optim:
  lr: 1.0e-3
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "scrap.yaml"
    path.write_text(YAML)
    return path


def test_yaml_with_defaults_and_typed_overrides(config_file: Path) -> None:
    config = load_config(config_file, ["optim.lr=3e-4", "optim.ema_decay=0.999",
                                       "model.backbone=efficientnet_lite1", "augment.vflip=0",
                                       "data.roots=[a, b]", "seed=7"])
    assert config.optim.lr == pytest.approx(3e-4)
    assert config.optim.ema_decay == pytest.approx(0.999)
    assert config.model.backbone == "efficientnet_lite1"
    assert config.input_size == 240  # the backbone's own size when not set
    assert config.augment.vflip == 0
    assert config.data.roots == [Path("a"), Path("b")]
    assert config.seed == 7
    assert config.optim.epochs == 15  # untouched default


def test_dumped_config_reloads_identically(config_file: Path, tmp_path: Path) -> None:
    config = load_config(config_file, ["model.input_size=128"])
    dump_config(config, tmp_path / "run.yaml")
    assert load_config(tmp_path / "run.yaml") == config
    assert yaml.safe_load((tmp_path / "run.yaml").read_text())["model"]["input_size"] == 128


@pytest.mark.parametrize(("override", "message"), [
    ("optim.learning_rate=1", "learning_rate"),  # a typo is an error, not a silent default
    ("optim.lr=-1", "lr"),
    ("model.backbone=resnet50", "efficientnet_lite0"),
    ("optim.lr", "key=value"),
    ("name=Has Spaces", "name"),
])
def test_bad_values_name_the_key(config_file: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(config_file, [override])


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("text", ["- name: scrap\n- data: {}\n", "42\n", "just words\n"])
@pytest.mark.parametrize("overrides", [[], ["optim.lr=3e-4"]])
def test_a_top_level_that_is_not_a_mapping_is_a_clear_error(
        tmp_path: Path, text: str, overrides: list[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="bad.yaml: the top level must be a mapping of sections"):
        load_config(path, overrides)


@pytest.mark.parametrize("size", ["0", "-5", "16"])
def test_input_size_has_a_lower_bound(config_file: Path, size: str) -> None:
    with pytest.raises(ConfigError, match=r"model\.input_size"):
        load_config(config_file, [f"model.input_size={size}"])
