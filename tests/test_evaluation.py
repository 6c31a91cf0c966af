"""Evaluation: metrics, temperature scaling, purity thresholds, card + stored temperature."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from colour_data import write_colour_dataset
from tinymodel import CLASSES, build_tiny_model

from scrapvision.datasets import Sample, load_samples
from scrapvision.decode import decode_frame
from scrapvision.engine import Engine, softmax
from scrapvision.evaluation import (
    DEFAULT_NOTE,
    Evaluation,
    EvaluationError,
    compare_evaluations,
    confusion_matrix,
    evaluate_model,
    expected_calibration_error,
    fit_temperature,
    mcnemar_p_value,
    negative_log_likelihood,
    per_class_scores,
    purity_at,
    purity_threshold,
    run_evaluation,
)


@pytest.fixture
def samples(tmp_path: Path) -> list[Sample]:
    root = tmp_path / "data"
    split_csv = write_colour_dataset(root)
    return load_samples([root], split_csv)


def one_class_probs(confidences: list[float]) -> np.ndarray:
    """Probabilities where class 0 is the top class with the given confidences."""
    p = np.array(confidences)
    return np.stack([p, 1 - p], axis=1)


# --- temperature and calibration -------------------------------------------------------

def test_fit_temperature_recovers_the_temperature_labels_were_drawn_with() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, (4000, 5)).astype(np.float32)
    true_probs = softmax(logits, 2.5).astype(np.float64)
    labels = np.array([rng.choice(5, p=p / p.sum()) for p in true_probs])
    fitted = fit_temperature(logits, labels)
    assert fitted == pytest.approx(2.5, rel=0.1)
    assert negative_log_likelihood(logits, labels, fitted) < negative_log_likelihood(logits, labels)


def test_fit_temperature_needs_rows() -> None:
    with pytest.raises(EvaluationError, match="validation rows"):
        fit_temperature(np.zeros((0, 3), np.float32), np.zeros(0, np.int64))


def test_ece_is_zero_when_confidence_matches_accuracy_and_large_when_overconfident() -> None:
    probs = one_class_probs([0.8] * 10)
    labels = np.array([0] * 8 + [1] * 2)  # 80% correct at 80% confidence
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-9)
    sure = one_class_probs([1.0] * 10)
    assert expected_calibration_error(sure, labels) == pytest.approx(0.2)


# --- classification metrics ------------------------------------------------------------

def test_confusion_matrix_and_per_class_scores() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])
    predictions = np.array([0, 0, 1, 1, 1, 1])
    matrix = confusion_matrix(labels, predictions, 3)
    assert matrix.tolist() == [[2, 1, 0], [0, 2, 0], [0, 1, 0]]
    scores = per_class_scores(matrix, ["a", "b", "c"])
    assert scores["a"] == {"precision": 1.0, "recall": pytest.approx(2 / 3),
                           "f1": pytest.approx(0.8), "support": 3}
    assert scores["b"]["precision"] == pytest.approx(0.5)
    assert scores["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


# --- purity thresholds -----------------------------------------------------------------

@pytest.mark.parametrize(("target", "expected"), [(0.75, 0.6), (0.9, 0.8), (1.0, 0.8)])
def test_purity_threshold_is_the_lowest_that_reaches_the_target(target: float,
                                                                expected: float) -> None:
    probs = one_class_probs([0.9, 0.8, 0.7, 0.6])
    labels = np.array([0, 0, 1, 0])  # the 0.7 row is wrong
    assert purity_threshold(probs, labels, 0, target) == pytest.approx(expected)
    purity, _ = purity_at(probs, labels, 0, expected)
    assert purity >= target


def test_purity_threshold_does_not_split_ties() -> None:
    probs = one_class_probs([0.9, 0.8, 0.8])
    labels = np.array([0, 0, 1])
    assert purity_threshold(probs, labels, 0, 0.9) == pytest.approx(0.9)


def test_purity_threshold_is_none_when_unreachable_or_never_predicted() -> None:
    probs = one_class_probs([0.9, 0.8])
    assert purity_threshold(probs, np.array([1, 0]), 0, 0.98) is None
    assert purity_threshold(probs, np.array([0, 0]), 1, 0.98) is None  # class 1 never top


def test_purity_at_reports_recall_over_all_rows_of_the_class() -> None:
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 0, 0])
    assert purity_at(probs, labels, 0, 0.8) == (1.0, pytest.approx(1 / 3))
    assert purity_at(probs, labels, 1, 0.5) == (0.0, None)  # no rows of class 1


# --- end to end ------------------------------------------------------------------------

def test_evaluate_model_writes_card_plots_and_stores_temperature(
        tmp_path: Path, samples: list[Sample]) -> None:
    model = build_tiny_model(tmp_path / "model" / "model.onnx", sharpness=0.1)
    before = Engine(model).info
    card = evaluate_model(model, samples, target_purity=0.95, data_roots=[tmp_path / "data"])

    folder = model.parent
    assert json.loads((folder / "card.json").read_text()) == card
    for plot in ("confusion_matrix.png", "reliability.png"):
        assert (folder / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (folder / "card.md").read_text()
    assert "What the data is and is not" in markdown and DEFAULT_NOTE in markdown

    after = Engine(model).info
    assert after.temperature == card["metrics"]["temperature"] != 1.0
    assert after.model_dump(exclude={"temperature"}) == before.model_dump(exclude={"temperature"})
    assert card["temperature_stored"] is True
    for written in ("model.onnx", "card.json", "card.md"):  # a service user can read them
        assert (folder / written).stat().st_mode & 0o044 == 0o044, written

    # the reported top-1 is what the serving path gets on the test rows
    test_rows = [s for s in samples if s.split == "test"]
    batch = np.stack([decode_frame(s.path.read_bytes(), after.input_size, "BGR")
                      for s in test_rows])
    served = Engine(model).predict(batch).argmax(axis=1)
    truth = np.array([CLASSES.index(s.label) for s in test_rows])
    assert card["metrics"]["top1"] == pytest.approx(float((served == truth).mean()))
    assert 0.5 < card["metrics"]["top1"] < 1.0  # the data is made to be imperfect
    assert np.sum(card["confusion_matrix"]["matrix"]) == len(test_rows)
    assert card["data"]["class_counts"]["test"] == {c: 30 for c in CLASSES}


def test_card_thresholds_have_the_shape_the_service_reads(samples: list[Sample],
                                                          tiny_model: Path) -> None:
    card = run_evaluation(tiny_model, samples, target_purity=0.95).card
    assert set(card["thresholds"]) == set(CLASSES)
    keys = {"threshold", "val_purity", "val_recall", "test_purity", "test_recall"}
    for entry in card["thresholds"].values():
        assert set(entry) == keys
        if entry["threshold"] is not None:
            assert entry["val_purity"] >= 0.95
            assert 0 < entry["val_recall"] <= 1


def test_unreachable_purity_gives_null_threshold(samples: list[Sample],
                                                 tiny_model: Path) -> None:
    card = run_evaluation(tiny_model, samples, target_purity=1.0).card
    ejectable = [t for t in card["thresholds"].values() if t["threshold"] is not None]
    assert all(t["val_purity"] == 1.0 for t in ejectable)
    hopeless = [replace(s, label="red") if s.split == "val" else s for s in samples]
    card = run_evaluation(tiny_model, hopeless, target_purity=0.98).card
    assert card["thresholds"]["blue"]["threshold"] is None  # every blue val row is "red"
    assert card["thresholds"]["blue"]["test_purity"] is None


def test_card_elsewhere_leaves_the_model_untouched(tmp_path: Path, samples: list[Sample],
                                                   tiny_model: Path) -> None:
    original = tiny_model.read_bytes()
    card = evaluate_model(tiny_model, samples, out_dir=tmp_path / "report", note="my data")
    assert tiny_model.read_bytes() == original
    assert card["temperature_stored"] is False
    assert "my data" in (tmp_path / "report" / "card.md").read_text()


def test_stored_temperature_keeps_graph_and_other_metadata(samples: list[Sample],
                                                           tiny_model: Path) -> None:
    graph_before = onnx.load(str(tiny_model)).graph
    evaluate_model(tiny_model, samples)
    rewritten = onnx.load(str(tiny_model))
    assert rewritten.graph == graph_before
    keys = [p.key for p in rewritten.metadata_props]
    assert keys.count("temperature") == 1
    assert not list(tiny_model.parent.glob("*.tmp"))


@pytest.mark.parametrize(("change", "message"), [
    (lambda s: [x for x in s if x.split != "val"], "no val rows"),
    (lambda s: [x for x in s if x.split != "test"], "no test rows"),
    (lambda s: [replace(x, label="copper") if x.split == "test" else x for x in s], "'copper'"),
    (lambda s: [replace(x, path=x.path.with_name("gone.jpg")) if x.split == "test" else x
                for x in s], "cannot read"),
])
def test_bad_data_is_refused_clearly(samples: list[Sample], tiny_model: Path, change,
                                     message: str) -> None:
    with pytest.raises(EvaluationError, match=message):
        run_evaluation(tiny_model, change(samples))


def test_unreadable_image_is_named(samples: list[Sample], tiny_model: Path) -> None:
    broken = next(s for s in samples if s.split == "val")
    broken.path.write_bytes(b"not an image")
    with pytest.raises(EvaluationError, match=broken.path.name):
        run_evaluation(tiny_model, samples)


@pytest.mark.parametrize("target", [0.0, 1.5])
def test_target_purity_must_be_a_probability(samples: list[Sample], tiny_model: Path,
                                             target: float) -> None:
    with pytest.raises(EvaluationError, match="target purity"):
        run_evaluation(tiny_model, samples, target_purity=target)


# --- comparison ------------------------------------------------------------------------

def test_mcnemar_p_value() -> None:
    assert mcnemar_p_value(0, 0) == 1.0
    assert mcnemar_p_value(0, 6) == pytest.approx(2 / 64)
    assert mcnemar_p_value(3, 3) == 1.0


def fake_evaluation(correct: list[bool], ece: float) -> Evaluation:
    top1 = sum(correct) / len(correct)
    card = {"metrics": {"top1": top1, "ece_after": ece}}
    return Evaluation(card, np.array(correct), [f"f{i}" for i in range(len(correct))])


def test_compare_prefers_top1_then_calibration() -> None:
    a = fake_evaluation([True] * 10 + [False] * 10, ece=0.01)
    b = fake_evaluation([True] * 20, ece=0.05)
    result = compare_evaluations(a, b, ["old", "new"])
    assert result["better"] == 1 and result["only_b"] == 10 and result["only_a"] == 0
    assert result["verdict"].startswith("new is better") and "significant" in result["verdict"]
    assert result["p_value"] < 0.05
    tie = compare_evaluations(fake_evaluation([True, False], 0.02),
                              fake_evaluation([False, True], 0.01))
    assert tie["better"] == 1  # same top-1, better calibrated


def test_compare_refuses_different_rows() -> None:
    a = fake_evaluation([True, True], 0.0)
    b = Evaluation(a.card, a.test_correct, ["x", "y"])
    with pytest.raises(EvaluationError, match="same test rows"):
        compare_evaluations(a, b)


def test_evaluation_path_never_imports_torch() -> None:
    code = ("import sys, scrapvision.cli, scrapvision.evaluation, scrapvision.cards; "
            "print(sorted(m for m in ('torch', 'torchvision', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_macro_f1_leaves_out_classes_absent_from_test(samples: list[Sample],
                                                      tiny_model: Path) -> None:
    no_green = [s for s in samples if not (s.split == "test" and s.label == "green")]
    metrics = run_evaluation(tiny_model, no_green).card["metrics"]
    assert metrics["per_class"]["green"]["support"] == 0
    present = [metrics["per_class"][c]["f1"] for c in ("blue", "red")]
    assert metrics["macro_f1"] == pytest.approx(np.mean(present))


def test_evaluating_twice_gives_the_same_temperature(samples: list[Sample],
                                                     tiny_model: Path) -> None:
    first = evaluate_model(tiny_model, samples)
    second = evaluate_model(tiny_model, samples)  # fitted on raw logits, not on stored T
    assert second["metrics"]["temperature"] == first["metrics"]["temperature"]
    assert second["thresholds"] == first["thresholds"]
