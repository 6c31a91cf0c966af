"""A tiny training config for fast tests: Lite0 at 64x64, two steps of batch 8."""

from __future__ import annotations

from pathlib import Path

from scrapvision.training.config import TrainConfig, load_config


def tiny_config(data_root: Path, runs_dir: Path, overrides: list[str] = ()) -> TrainConfig:
    """No ImageNet weights (the backbone tests cover loading them); EMA, probe and TTA on."""
    raw = {
        "name": "tiny", "threads": 1, "runs_dir": str(runs_dir),
        "data": {"roots": [str(data_root)], "split_csv": str(data_root / "split.csv")},
        "model": {"input_size": 64, "pretrained": False, "tta_flip": True},
        "optim": {"epochs": 1, "batch_size": 8, "max_steps_per_epoch": 2, "warmup_epochs": 0,
                  "probe_epochs": 1, "ema_decay": 0.9, "freeze_stages": 1},
    }
    return load_config(None, list(overrides), base=raw)
