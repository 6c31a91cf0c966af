"""The engineers' one command: train -> export -> evaluate -> compare with the active model.

The new version is promoted only when asked (`promote=True`) and only when it beats the
active version on the same test rows; otherwise the verdict is printed and the active
model keeps serving. Evaluation is onnxruntime on the exported file, as served.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scrapvision.evaluation import compare_evaluations, evaluate_model, run_evaluation
from scrapvision.registry import ModelRegistry
from scrapvision.training.config import TrainConfig
from scrapvision.training.export import ExportResult, export_run
from scrapvision.training.trainer import run_samples, train


@dataclass(frozen=True)
class RetrainResult:
    run_dir: Path
    export: ExportResult
    card: dict[str, Any]
    previous: str | None  # the version that was active before, if any
    comparison: dict[str, Any] | None  # compare_evaluations(new, previous)
    promoted: bool


def retrain(config: TrainConfig, *, models_dir: Path = Path("models"), promote: bool = False,
            target_purity: float = 0.98, progress: bool = True) -> RetrainResult:
    registry = ModelRegistry(models_dir)
    previous = registry.active(config.name) if registry.versions(config.name) else None
    run_dir = train(config, progress=progress)
    exported = export_run(run_dir, models_dir=models_dir)
    samples = run_samples(config, run_dir)
    card = evaluate_model(exported.path, samples, target_purity=target_purity,
                          data_roots=config.data.roots, progress=progress)
    if previous is None:  # first version: export already made it active
        return RetrainResult(run_dir, exported, card, None, None, exported.promoted)

    new = run_evaluation(exported.path, samples, target_purity=target_purity)
    with tempfile.TemporaryDirectory() as tmp:  # never touch the serving file's metadata
        old_path = Path(shutil.copy2(registry.model_path(config.name, previous), tmp))
        old = run_evaluation(old_path, samples, target_purity=target_purity)
    comparison = compare_evaluations(new, old, refs=(exported.version, previous))
    promoted = promote and comparison["better"] == 0
    if promoted:
        registry.promote(config.name, exported.version)
    return RetrainResult(run_dir, exported, card, previous, comparison, promoted)
