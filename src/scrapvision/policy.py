"""Sort policy: calibrated class probabilities -> eject to a bin, pass, or recirculate.

A class is ejected only when its calibrated probability clears that class's threshold;
otherwise the item goes round again. Thresholds come, per class, from the line config,
else from the model card (the threshold that reaches the card's target bin purity on
validation data; null there means no threshold reaches it, so never eject), else a
default minimum confidence. Everything per-class is resolved to lists once per model, and a
frame is decided in plain Python on its probabilities as a list: for ten-odd classes that
is several times faster than NumPy's per-call overhead (argsort, scalar indexing).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np

from scrapvision.settings import FusionSettings, LineSettings

NEVER = math.inf  # threshold of a class that is never ejected


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the policy says about one frame (the model-dependent half of a DecisionRecord)."""

    class_name: str
    confidence: float
    margin: float
    action: str  # "eject" | "pass" | "recirculate"
    bin: str | None
    top_k: list[tuple[str, float]]


def card_thresholds(card: dict[str, Any] | None) -> dict[str, float | None]:
    """Per-class thresholds from a model card's `thresholds[class]["threshold"]`."""
    if not card:
        return {}
    entries = card.get("thresholds") or {}
    return {name: entry.get("threshold") for name, entry in entries.items()
            if isinstance(entry, dict) and "threshold" in entry}


class SortPolicy:
    """Per-line decision rule for one model's class list."""

    def __init__(self, line: LineSettings, class_names: list[str],
                 card: dict[str, Any] | None = None) -> None:
        _check_class_names(line, class_names)
        self.class_names = list(class_names)
        self.recirculate_bin = line.recirculate_bin
        self.top_k = min(line.top_k, len(class_names))
        sources = [line.thresholds]
        if line.use_card_thresholds:
            _check_target_purity(line, card)
            sources.append(card_thresholds(card))
        self.thresholds = [_threshold(name, sources, line.min_confidence)
                           for name in class_names]
        bins = line.bins if line.bins is not None else {name: name for name in class_names}
        self.bins = [bins.get(name) for name in class_names]

    def describe(self) -> dict[str, dict[str, Any]]:
        """Threshold and bin per class, for `GET /v1/lines`."""
        return {
            name: {"threshold": None if math.isinf(t) else float(t), "bin": self.bins[i]}
            for i, (name, t) in enumerate(zip(self.class_names, self.thresholds))
        }

    def decide(self, probs: np.ndarray) -> Verdict:
        """Verdict for one frame's probability vector (C,); a tie goes to the last tied class."""
        values: list[float] = probs.tolist()
        order = sorted(range(len(values)), key=values.__getitem__)[::-1]
        best = order[0]
        confidence = values[best]
        margin = confidence - values[order[1]] if len(order) > 1 else confidence
        top_k = [(self.class_names[i], values[i]) for i in order[: self.top_k]]
        name = self.class_names[best]
        if confidence < self.thresholds[best]:
            return Verdict(name, confidence, margin, "recirculate", self.recirculate_bin, top_k)
        target = self.bins[best]
        action = "eject" if target is not None else "pass"
        return Verdict(name, confidence, margin, action, target, top_k)


class ItemFusion:
    """Mean of the probabilities of the last frames of each item id, within a time window.

    Several views of one item on the belt disagree less than single frames; the decision
    for each frame uses every recent frame of its item seen so far. Memory is bounded by
    `max_items` (oldest items are forgotten first).
    """

    def __init__(self, settings: FusionSettings) -> None:
        self.settings = settings
        self._items: OrderedDict[Hashable, list[tuple[float, np.ndarray]]] = OrderedDict()

    def fuse(self, item_id: Hashable, probs: np.ndarray, now: float | None = None) -> np.ndarray:
        now = time.monotonic() if now is None else now
        horizon = now - self.settings.window_s
        frames = [f for f in self._items.pop(item_id, []) if f[0] >= horizon]
        frames.append((now, probs))
        frames = frames[-self.settings.max_frames:]
        self._items[item_id] = frames
        while len(self._items) > self.settings.max_items:
            self._items.popitem(last=False)
        if len(frames) == 1:
            return probs
        return np.mean([p for _, p in frames], axis=0)


def _threshold(name: str, sources: list[dict[str, float | None]], default: float) -> float:
    for source in sources:
        if name in source:
            value = source[name]
            return NEVER if value is None else float(value)
    return default


def _check_target_purity(line: LineSettings, card: dict[str, Any] | None) -> None:
    """Thresholds for another purity than the line asks for would sort silently wrong."""
    if line.target_purity is None:
        return
    chosen_for = (card or {}).get("target_purity")
    if chosen_for is None or not math.isclose(chosen_for, line.target_purity):
        found = ("the model has no card" if card is None
                 else f"its card's thresholds are for {chosen_for} purity")
        raise ValueError(
            f"line wants bins of {line.target_purity} purity but {found}: run "
            f"`scrapvision evaluate --target-purity {line.target_purity}` on the model"
        )


def _check_class_names(line: LineSettings, class_names: list[str]) -> None:
    """Config naming a class the model does not have is a typo: refuse it loudly."""
    known = set(class_names)
    for field_name in ("bins", "thresholds"):
        unknown = set(getattr(line, field_name) or {}) - known
        if unknown:
            raise ValueError(
                f"line config '{field_name}' names classes the model '{line.model}' does not "
                f"have: {sorted(unknown)} (model classes: {class_names})"
            )
