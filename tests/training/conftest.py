"""Tiny generated frames for fast training tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from colour_data import write_colour_dataset


@pytest.fixture(scope="package")
def colour_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ImageFolder root of noisy colour frames (blue/green/red) with a split.csv in it."""
    root = tmp_path_factory.mktemp("colours") / "data"
    write_colour_dataset(root, per_split={"train": 8, "val": 3, "test": 3}, max_mix=0.3)
    return root
