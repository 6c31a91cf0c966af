"""Shared fixtures: tiny models built in the test run (no downloads, no torch)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tinymodel import build_tiny_model  # noqa: E402

from scrapvision import decode  # noqa: E402
from scrapvision.registry import ModelRegistry  # noqa: E402


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    """Path to a tiny valid scrapvision ONNX model (classes blue/green/red)."""
    return build_tiny_model(tmp_path / "tiny.onnx")


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """A models/ registry holding one active tiny model named 'tiny' (version v1)."""
    root = tmp_path / "models"
    registry = ModelRegistry(root)
    registry.add("tiny", build_tiny_model(tmp_path / "build" / "tiny.onnx"))
    registry.promote("tiny", "v1")
    return root


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if pixels are decoded: refusals must come from the header alone."""
    def refuse(*args, **kwargs):
        raise AssertionError("a decoder was called")
    monkeypatch.setattr(decode.cv2, "imdecode", refuse)
    monkeypatch.setattr(decode.simplejpeg, "decode_jpeg", refuse)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`@pytest.mark.slow` tests (soak, long training) run only with SCRAPVISION_SLOW=1."""
    if os.environ.get("SCRAPVISION_SLOW") == "1":
        return
    skip_slow = pytest.mark.skip(reason="slow test: set SCRAPVISION_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)
