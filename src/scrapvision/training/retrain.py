"""The engineers' one command: train -> export -> evaluate -> compare with the active model.

The new version is promoted only when asked (`promote=True`) and only when it beats the
active version on the same test rows; otherwise the verdict is printed and the active
model keeps serving. A new version whose classes differ from the active one's is never
compared nor promoted: the old model cannot score rows of a class it lacks, and swapping
the class list under a sorting line is a decision for a person (`models promote`).
Evaluation is onnxruntime on the exported file, as served.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scrapvision.datasets import SPLITS, Sample, load_samples
from scrapvision.engine import Engine
from scrapvision.evaluation import compare_evaluations, evaluate_model, run_evaluation
from scrapvision.registry import ModelRegistry
from scrapvision.training.config import TrainConfig
from scrapvision.training.export import ExportResult, export_run
from scrapvision.training.trainer import run_samples, train


class RetrainError(ValueError):
    """The data cannot go through the whole retrain; refused before anything was trained."""


@dataclass(frozen=True)
class RetrainResult:
    run_dir: Path
    export: ExportResult
    card: dict[str, Any]
    previous: str | None  # the version that was active before, if any
    comparison: dict[str, Any] | None  # compare_evaluations(new, previous)
    promoted: bool
    comparable: bool = True  # False: the classes differ from `previous`'s, no comparison


def check_evaluable(samples: list[Sample]) -> None:
    """Refuse data without train, val or test rows before training, not after registering.

    Evaluation fits calibration and thresholds on val and reports on test; failing there
    would leave a registered (for a first version, active) model without a card.
    """
    missing = [split for split in SPLITS if not any(s.split == split for s in samples)]
    if missing:
        raise RetrainError(
            f"the data has no {' or '.join(repr(split) for split in missing)} rows: retrain "
            "trains on train, calibrates on val and reports on test (give a split.csv with "
            "all three, or data.fractions with none of them 0)")


def same_classes(model_path: Path, card: dict[str, Any]) -> bool:
    """Whether the model knows exactly the card's classes (in any order: rows are matched
    by label name), i.e. whether both can be scored on the same test rows."""
    return set(Engine(model_path).info.class_names) == set(card["model"]["class_names"])


def retrain(config: TrainConfig, *, models_dir: Path = Path("models"), promote: bool = False,
            target_purity: float = 0.98, progress: bool = True) -> RetrainResult:
    registry = ModelRegistry(models_dir)
    previous = registry.active(config.name) if registry.versions(config.name) else None
    # the split is seeded, so this is the very split train() makes and run_samples() reads
    check_evaluable(load_samples(config.data.roots, config.data.split_csv, seed=config.seed,
                                 fractions=config.data.fractions))
    run_dir = train(config, progress=progress)
    exported = export_run(run_dir, models_dir=models_dir)
    samples = run_samples(config, run_dir)
    card = evaluate_model(exported.path, samples, target_purity=target_purity,
                          data_roots=config.data.roots, progress=progress)
    if previous is None:  # first version: export already made it active
        return RetrainResult(run_dir, exported, card, None, None, exported.promoted)
    if not same_classes(registry.model_path(config.name, previous), card):
        return RetrainResult(run_dir, exported, card, previous, None, False, comparable=False)

    new = run_evaluation(exported.path, samples, target_purity=target_purity)
    with tempfile.TemporaryDirectory() as tmp:  # never touch the serving file's metadata
        old_path = Path(shutil.copy2(registry.model_path(config.name, previous), tmp))
        old = run_evaluation(old_path, samples, target_purity=target_purity)
    comparison = compare_evaluations(new, old, refs=(exported.version, previous))
    promoted = promote and comparison["better"] == 0
    if promoted:
        registry.promote(config.name, exported.version)
    return RetrainResult(run_dir, exported, card, previous, comparison, promoted)
