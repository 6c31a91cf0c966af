"""Evaluate an exported model the way it is served: onnxruntime, `decode_frame`, no torch.

The numbers a model card reports must be the numbers the sorting line gets, so images go
through the serving decode path and the ONNX graph itself, never through the training
pipeline. Calibration (a softmax temperature) and the per-class purity thresholds are
fitted on the `val` rows only; `test` rows are used for reporting alone.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import track

from scrapvision import cards
from scrapvision.datasets import SPLITS, Sample, fingerprint
from scrapvision.decode import DecodeError, decode_frame
from scrapvision.engine import Engine, softmax
from scrapvision.registry import replace_readable

DEFAULT_NOTE = (
    "Demonstration data: public photos of household objects and web images, one item per "
    "picture on a plain background. It is not conveyor frames: belt texture, motion blur, "
    "overlapping items, dirt and the plant's lighting are absent, so these figures do not "
    "predict accuracy on a sorting line until the model is evaluated on the plant's own "
    "labelled frames."
)
ECE_BINS = 15
BATCH_SIZE = 32
DEFAULT_TARGET_PURITY = 0.98  # share of a bin's items that belong in it
# Temperatures outside this range mean the logits are broken, not merely miscalibrated.
_LOG_T_RANGE = (math.log(0.05), math.log(20.0))


class EvaluationError(ValueError):
    """The data cannot evaluate this model (no rows, unknown labels, unreadable images)."""


@dataclass(frozen=True)
class SplitOutputs:
    """Raw model outputs for one split, row-aligned with its samples."""

    samples: list[Sample]
    logits: np.ndarray  # (N, C) float32
    labels: np.ndarray  # (N,) int class indices in the model's class order


@dataclass(frozen=True)
class Evaluation:
    """A finished evaluation: the card plus what a comparison needs row by row."""

    card: dict[str, Any]
    test_correct: np.ndarray  # (N_test,) bool, top-1 correct per test row
    test_files: list[str]


def predict_split(engine: Engine, samples: Sequence[Sample], *, progress: bool = False,
                  description: str = "") -> SplitOutputs:
    """Decode and run every sample through the model, in batches."""
    index = {name: i for i, name in enumerate(engine.info.class_names)}
    unknown = sorted({s.label for s in samples} - index.keys())
    if unknown:
        raise EvaluationError(
            f"labels {unknown} are not classes of {engine.info.ref} "
            f"(it knows {engine.info.class_names})"
        )
    logits = np.zeros((len(samples), engine.info.num_classes), dtype=np.float32)
    starts = range(0, len(samples), BATCH_SIZE)
    for start in track(starts, description=description, disable=not progress, transient=True):
        chunk = samples[start : start + BATCH_SIZE]
        batch = np.stack([decode_sample(engine, sample) for sample in chunk])
        logits[start : start + len(chunk)] = engine.logits(batch)
    labels = np.array([index[s.label] for s in samples], dtype=np.int64)
    return SplitOutputs(list(samples), logits, labels)


def decode_sample(engine: Engine, sample: Sample) -> np.ndarray:
    """One sample decoded as served for `engine`; unreadable files raise EvaluationError."""
    try:
        return decode_frame(sample.path.read_bytes(), engine.input_size,
                            engine.info.colour_order)
    except (OSError, DecodeError) as exc:
        raise EvaluationError(f"cannot read {sample.path}: {exc}") from exc


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray,
                            temperature: float = 1.0) -> float:
    """Mean NLL of the true class under softmax(logits / temperature), in float64."""
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, iterations: int = 60) -> float:
    """Temperature minimising the NLL (Guo et al. 2017), by golden-section search on log T.

    The NLL is convex in 1/T, hence unimodal in log T, so a 1-D bracketing search finds the
    optimum without scipy; 60 steps shrink the bracket to ~1e-12 of its width.
    """
    if len(labels) == 0:
        raise EvaluationError("cannot fit a temperature without validation rows")
    inv_phi = (math.sqrt(5) - 1) / 2
    low, high = _LOG_T_RANGE

    def loss(log_t: float) -> float:
        return negative_log_likelihood(logits, labels, math.exp(log_t))

    a, b = high - inv_phi * (high - low), low + inv_phi * (high - low)
    loss_a, loss_b = loss(a), loss(b)
    for _ in range(iterations):
        if loss_a < loss_b:
            high, b, loss_b = b, a, loss_a
            a = high - inv_phi * (high - low)
            loss_a = loss(a)
        else:
            low, a, loss_a = a, b, loss_b
            b = low + inv_phi * (high - low)
            loss_b = loss(b)
    return round(math.exp((low + high) / 2), 6)


def reliability_bins(probs: np.ndarray, labels: np.ndarray,
                     bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Top-1 confidence vs accuracy in equal-width confidence bins (empty bins left out)."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    out = []
    for b in range(bins):
        mask = which == b
        if mask.any():
            out.append({"low": float(edges[b]), "high": float(edges[b + 1]),
                        "count": int(mask.sum()), "confidence": float(confidence[mask].mean()),
                        "accuracy": float(correct[mask].mean())})
    return out


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray,
                               bins: int = ECE_BINS) -> float:
    """Count-weighted mean |accuracy - confidence| over the reliability bins."""
    if len(labels) == 0:
        return 0.0
    return float(sum(b["count"] * abs(b["accuracy"] - b["confidence"])
                     for b in reliability_bins(probs, labels, bins)) / len(labels))


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray,
                     num_classes: int) -> np.ndarray:
    """Counts with rows = true class, columns = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def per_class_scores(matrix: np.ndarray, class_names: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support per class from a confusion matrix."""
    true_positive = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0)
    support = matrix.sum(axis=1)
    scores = {}
    for i, name in enumerate(class_names):
        precision = true_positive[i] / predicted[i] if predicted[i] else 0.0
        recall = true_positive[i] / support[i] if support[i] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores[name] = {"precision": float(precision), "recall": float(recall),
                        "f1": float(f1), "support": int(support[i])}
    return scores


def purity_at(probs: np.ndarray, labels: np.ndarray, cls: int,
              threshold: float) -> tuple[float | None, float | None]:
    """(purity, recall) of "predicted `cls` with p >= threshold"; None where undefined."""
    accepted = (probs.argmax(axis=1) == cls) & (probs[:, cls] >= threshold)
    is_cls = labels == cls
    purity = float(is_cls[accepted].mean()) if accepted.any() else None
    recall = float((accepted & is_cls).sum() / is_cls.sum()) if is_cls.any() else None
    return purity, recall


def purity_threshold(probs: np.ndarray, labels: np.ndarray, cls: int,
                     target: float) -> float | None:
    """Lowest confidence threshold whose accepted rows reach `target` purity, or None.

    Recall only falls as the threshold rises, so the lowest threshold that reaches the
    target keeps the most recall. Ties in confidence are accepted or refused together.
    """
    predicted = probs.argmax(axis=1) == cls
    confidence, correct = probs[predicted, cls], labels[predicted] == cls
    if confidence.size == 0:
        return None
    order = np.argsort(-confidence, kind="stable")
    confidence, correct = confidence[order], correct[order]
    purity = np.cumsum(correct) / np.arange(1, confidence.size + 1)
    cut_allowed = np.append(confidence[:-1] > confidence[1:], True)
    reachable = np.flatnonzero(cut_allowed & (purity >= target))
    return float(confidence[reachable[-1]]) if reachable.size else None


def class_thresholds(val_probs: np.ndarray, val_labels: np.ndarray, test_probs: np.ndarray,
                     test_labels: np.ndarray, class_names: list[str],
                     target: float) -> dict[str, dict[str, float | None]]:
    """Per class: threshold chosen on val for `target` purity, measured on val and test.

    A threshold of None means the class never reaches the target: the policy must never
    eject it (recirculate instead).
    """
    out = {}
    for i, name in enumerate(class_names):
        threshold = purity_threshold(val_probs, val_labels, i, target)
        entry: dict[str, float | None] = {"threshold": threshold, "val_purity": None,
                                          "val_recall": None, "test_purity": None,
                                          "test_recall": None}
        if threshold is not None:
            entry["val_purity"], entry["val_recall"] = purity_at(val_probs, val_labels, i,
                                                                 threshold)
            entry["test_purity"], entry["test_recall"] = purity_at(test_probs, test_labels, i,
                                                                   threshold)
        out[name] = entry
    return out


def run_evaluation(model_path: Path, samples: Sequence[Sample], *,
                   target_purity: float = DEFAULT_TARGET_PURITY, note: str | None = None,
                   data_roots: Sequence[Path] = (), progress: bool = False) -> Evaluation:
    """Evaluate without writing anything: fit on `val`, report on `test`."""
    if not 0.0 < target_purity <= 1.0:
        raise EvaluationError(f"target purity must be in (0, 1], got {target_purity}")
    by_split = {split: [s for s in samples if s.split == split] for split in ("val", "test")}
    missing = [split for split, rows in by_split.items() if not rows]
    if missing:
        raise EvaluationError(
            f"no {' or '.join(missing)} rows in the data: evaluation fits calibration and "
            "thresholds on val and reports on test (give a split.csv with both)"
        )
    engine = Engine(model_path)
    names = engine.info.class_names
    val = predict_split(engine, by_split["val"], progress=progress, description="val")
    test = predict_split(engine, by_split["test"], progress=progress, description="test")

    temperature = fit_temperature(val.logits, val.labels)
    test_raw, test_calibrated = softmax(test.logits), softmax(test.logits, temperature)
    predictions = test_calibrated.argmax(axis=1)  # as the service decides
    matrix = confusion_matrix(test.labels, predictions, len(names))
    per_class = per_class_scores(matrix, names)
    metrics = {
        "top1": float((predictions == test.labels).mean()),
        # classes absent from test would count as F1 = 0: leave them out of the mean
        "macro_f1": float(np.mean([s["f1"] for s in per_class.values() if s["support"]])),
        "test_rows": len(test.labels),
        "temperature": temperature,
        "val_nll_before": negative_log_likelihood(val.logits, val.labels),
        "val_nll_after": negative_log_likelihood(val.logits, val.labels, temperature),
        "ece_before": expected_calibration_error(test_raw, test.labels),
        "ece_after": expected_calibration_error(test_calibrated, test.labels),
        "per_class": per_class,
    }
    card = {
        "model": {"name": engine.info.name, "version": engine.info.version,
                  "architecture": engine.info.architecture,
                  "input_size": list(engine.info.input_size),
                  "colour_order": engine.info.colour_order, "class_names": names,
                  "quantization": engine.info.quantization,
                  "ensemble": engine.info.ensemble, "file": str(model_path)},
        "evaluated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data": {
            "roots": [str(root) for root in data_roots],
            "fingerprint": fingerprint(list(samples)),
            "training_fingerprint": engine.info.data_fingerprint,
            "class_counts": _class_counts(samples),
            "note": note or DEFAULT_NOTE,
        },
        "target_purity": target_purity,
        "metrics": metrics,
        "confusion_matrix": {"labels": names, "rows": "true", "columns": "predicted",
                             "matrix": matrix.tolist()},
        "reliability": {"before": reliability_bins(test_raw, test.labels),
                        "after": reliability_bins(test_calibrated, test.labels)},
        "thresholds": class_thresholds(softmax(val.logits, temperature), val.labels,
                                       test_calibrated, test.labels, names, target_purity),
    }
    return Evaluation(card, predictions == test.labels,
                      [str(s.path) for s in test.samples])


def _class_counts(samples: Sequence[Sample]) -> dict[str, dict[str, int]]:
    """{split: {class: rows}} in train/val/test order, splits without rows left out."""
    counts = Counter((s.split, s.label) for s in samples)
    return {split: {label: n for (row_split, label), n in sorted(counts.items())
                    if row_split == split}
            for split in SPLITS if any(row_split == split for row_split, _ in counts)}


def evaluate_model(model_path: Path, samples: list[Sample], *,
                   target_purity: float = DEFAULT_TARGET_PURITY,
                   out_dir: Path | None = None, note: str | None = None,
                   data_roots: Sequence[Path] = (), progress: bool = False) -> dict[str, Any]:
    """Evaluate, write the card (JSON, Markdown, plots) and return it.

    The card's thresholds hold for probabilities at the fitted temperature, so the
    temperature is written into the model only when the card goes next to it (the default):
    a card written elsewhere (`out_dir`) is a report and leaves the model untouched.
    """
    result = run_evaluation(Path(model_path), samples, target_purity=target_purity, note=note,
                            data_roots=data_roots, progress=progress)
    return write_evaluation(result, model_path, out_dir)


def write_evaluation(result: Evaluation, model_path: Path,
                     out_dir: Path | None = None) -> dict[str, Any]:
    """Write the card of a finished `run_evaluation` of `model_path`, as `evaluate_model`."""
    model_path = Path(model_path)
    out_dir = Path(out_dir) if out_dir is not None else model_path.parent
    beside_model = out_dir.resolve() == model_path.parent.resolve()
    result.card["temperature_stored"] = beside_model
    if beside_model:
        store_temperature(model_path, result.card["metrics"]["temperature"])
    cards.write_card(result.card, out_dir)
    return result.card


def store_temperature(model_path: Path, temperature: float) -> None:
    """Rewrite the `temperature` metadata entry of an ONNX file, atomically, in place.

    Only that entry changes; the graph and the rest of the metadata are kept as they are.
    A reader (the service reloading models) never sees a half-written file.
    """
    import onnx  # only here: reading and evaluating needs onnxruntime alone

    model = onnx.load(str(model_path), load_external_data=False)
    entries = {prop.key: prop for prop in model.metadata_props}
    if "temperature" in entries:
        entries["temperature"].value = str(temperature)
    else:
        model.metadata_props.add(key="temperature", value=str(temperature))
    fd, tmp_name = tempfile.mkstemp(dir=model_path.parent, suffix=".onnx.tmp")
    os.close(fd)
    try:
        onnx.save(model, tmp_name)
        replace_readable(tmp_name, model_path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def mcnemar_p_value(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar test: could the discordant rows split this way by chance?"""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


def compare_evaluations(a: Evaluation, b: Evaluation,
                        refs: Sequence[str] = ("A", "B")) -> dict[str, Any]:
    """Which of two models evaluated on the same test rows is better, and how surely.

    Top-1 decides, then ECE after calibration; the McNemar test on the rows only one model
    gets right says whether the top-1 difference could be noise.
    """
    if a.test_files != b.test_files:
        raise EvaluationError("the two evaluations did not use the same test rows")
    only_a = int((a.test_correct & ~b.test_correct).sum())
    only_b = int((b.test_correct & ~a.test_correct).sum())
    p_value = mcnemar_p_value(only_a, only_b)
    ma, mb = a.card["metrics"], b.card["metrics"]
    # Counts, and ECE to the 4 decimals shown, so float noise never picks a winner.
    key_a = (int(a.test_correct.sum()), -round(ma["ece_after"], 4))
    key_b = (int(b.test_correct.sum()), -round(mb["ece_after"], 4))
    if key_a == key_b:
        better, verdict = None, "the two models score the same on these rows"
    else:
        better = 0 if key_a > key_b else 1
        gap = abs(100 * (ma["top1"] - mb["top1"]))  # the better one never has lower top-1
        verdict = (f"{refs[better]} is better: top-1 {gap:+.2f} pp, ECE after "
                   f"{ma['ece_after']:.4f} vs {mb['ece_after']:.4f}; rows only A gets right: "
                   f"{only_a}, only B: {only_b} (McNemar p={p_value:.3g}, "
                   f"{'' if p_value < 0.05 else 'not '}significant at 5%)")
    return {"better": better, "only_a": only_a, "only_b": only_b, "p_value": p_value,
            "verdict": verdict}
