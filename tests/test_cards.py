"""Model cards: Markdown rendering, headline numbers, files written."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from colour_data import write_colour_dataset

from scrapvision.cards import headline, render_markdown, write_card
from scrapvision.datasets import load_samples
from scrapvision.evaluation import run_evaluation


@pytest.fixture
def card(tmp_path: Path, tiny_model: Path) -> dict:
    split_csv = write_colour_dataset(tmp_path / "data")
    samples = load_samples([tmp_path / "data"], split_csv)
    return run_evaluation(tiny_model, samples, target_purity=0.95,
                          data_roots=[tmp_path / "data"], note="colour squares").card


def test_markdown_states_model_data_results_and_thresholds(card: dict) -> None:
    text = render_markdown(card)
    assert text.startswith("# Model card: tiny:v1\n")
    assert "tiny-colour-test" in text and "colour squares" in text
    assert f"{card['metrics']['top1']:.2%}" in text
    assert f"`{card['data']['fingerprint']}` (the model does not record" in text
    assert "| blue | 4 | 30 | 30 |" in text  # class counts in train/val/test order
    assert "## Eject thresholds for 95% purity" in text
    for name, entry in card["thresholds"].items():
        assert f"| {name} | {entry['threshold']:.4f} |" in text


def test_markdown_says_whether_the_data_is_the_training_data(card: dict) -> None:
    card = copy.deepcopy(card)
    card["data"]["training_fingerprint"] = card["data"]["fingerprint"]
    assert "the model's own training data and split" in render_markdown(card)
    card["data"]["training_fingerprint"] = "abc123"
    assert "not the model's training data, which was `abc123`" in render_markdown(card)


def test_markdown_says_never_for_a_class_without_threshold(card: dict) -> None:
    card = copy.deepcopy(card)
    card["thresholds"]["red"] = dict.fromkeys(card["thresholds"]["red"])
    assert "| red | never | - | - | - | - |" in render_markdown(card)


def test_headline_counts_ejectable_classes(card: dict) -> None:
    card = copy.deepcopy(card)
    card["thresholds"]["red"]["threshold"] = None
    numbers = headline(card)
    assert numbers["ejectable"] == len(card["thresholds"]) - 1
    assert numbers["classes"] == 3
    assert numbers["top1"] == card["metrics"]["top1"]


def test_write_card_writes_json_markdown_and_plots(card: dict, tmp_path: Path) -> None:
    out = tmp_path / "nested" / "card"
    write_card(card, out)
    assert json.loads((out / "card.json").read_text()) == card
    assert (out / "card.md").read_text() == render_markdown(card)
    for name in card["plots"].values():
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
        assert f"]({name})" in render_markdown(card)
