"""Sort policy: thresholds (config > card > default), bins, pass, recirculate, fusion."""

from __future__ import annotations

import numpy as np
import pytest

from scrapvision.policy import ItemFusion, SortPolicy, card_thresholds
from scrapvision.settings import FusionSettings, LineSettings

CLASSES = ["copper", "steel", "plastic"]
CARD = {"target_purity": 0.98, "thresholds": {
    "copper": {"threshold": 0.9, "val_purity": 0.98},
    "steel": {"threshold": None, "val_purity": 0.9},  # never reaches the purity
    "plastic": {"threshold": 0.6},
}}


def probs(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def test_card_thresholds_decide_eject_or_recirculate() -> None:
    policy = SortPolicy(LineSettings(model="m"), CLASSES, CARD)
    sure = policy.decide(probs(0.95, 0.03, 0.02))
    assert (sure.action, sure.bin, sure.class_name) == ("eject", "copper", "copper")
    assert sure.margin == pytest.approx(0.92)
    unsure = policy.decide(probs(0.85, 0.1, 0.05))
    assert (unsure.action, unsure.bin, unsure.class_name) == ("recirculate", "recirculate",
                                                              "copper")


def test_null_card_threshold_means_never_eject() -> None:
    policy = SortPolicy(LineSettings(model="m"), CLASSES, CARD)
    assert policy.decide(probs(0.0, 1.0, 0.0)).action == "recirculate"
    assert policy.describe()["steel"] == {"threshold": None, "bin": "steel"}


def test_configured_thresholds_override_the_card_and_default_applies_elsewhere() -> None:
    line = LineSettings(model="m", thresholds={"copper": 0.5}, min_confidence=0.7)
    policy = SortPolicy(line, CLASSES, {"thresholds": {"steel": {"threshold": 0.99}}})
    assert policy.describe() == {"copper": {"threshold": 0.5, "bin": "copper"},
                                 "steel": {"threshold": 0.99, "bin": "steel"},
                                 "plastic": {"threshold": 0.7, "bin": "plastic"}}
    ignoring_card = line.model_copy(update={"use_card_thresholds": False})
    assert SortPolicy(ignoring_card, CLASSES, CARD).describe()["steel"]["threshold"] == 0.7


def test_bin_map_with_pass_class() -> None:
    line = LineSettings(model="m", bins={"copper": "1", "steel": "2", "plastic": None},
                        recirculate_bin="R", min_confidence=0.5)
    policy = SortPolicy(line, CLASSES)
    assert policy.decide(probs(0.1, 0.8, 0.1)).bin == "2"
    passed = policy.decide(probs(0.1, 0.1, 0.8))
    assert (passed.action, passed.bin) == ("pass", None)
    assert policy.decide(probs(0.4, 0.3, 0.3)).bin == "R"


def test_a_class_left_out_of_the_bin_map_passes() -> None:
    policy = SortPolicy(LineSettings(model="m", bins={"copper": "1"}, min_confidence=0.5),
                        CLASSES)
    unlisted = policy.decide(probs(0.1, 0.8, 0.1))
    assert (unlisted.action, unlisted.bin) == ("pass", None)
    assert policy.decide(probs(0.8, 0.1, 0.1)).bin == "1"


def test_top_k_is_ordered_and_bounded() -> None:
    policy = SortPolicy(LineSettings(model="m", top_k=2), CLASSES)
    assert [name for name, _ in policy.decide(probs(0.2, 0.3, 0.5)).top_k] == ["plastic",
                                                                                "steel"]


def test_config_naming_unknown_classes_is_refused() -> None:
    with pytest.raises(ValueError, match="'bins' names classes .* \\['coper'\\]"):
        SortPolicy(LineSettings(model="m", bins={"coper": "1"}), CLASSES)
    with pytest.raises(ValueError, match="thresholds"):
        SortPolicy(LineSettings(model="m", thresholds={"tin": 0.5}), CLASSES)


def test_card_thresholds_tolerate_missing_card() -> None:
    assert card_thresholds(None) == {}
    assert card_thresholds({"thresholds": {"a": {"threshold": None}}}) == {"a": None}


def test_fusion_averages_recent_frames_of_one_item() -> None:
    fusion = ItemFusion(FusionSettings(max_frames=2, window_s=1.0, max_items=2))
    first = fusion.fuse("item", probs(1.0, 0.0, 0.0), now=0.0)
    assert first.tolist() == [1.0, 0.0, 0.0]
    assert fusion.fuse("item", probs(0.0, 1.0, 0.0), now=0.5).tolist() == [0.5, 0.5, 0.0]
    # max_frames=2: the first frame drops out
    assert fusion.fuse("item", probs(0.0, 0.0, 1.0), now=0.6).tolist() == [0.0, 0.5, 0.5]
    # outside the window: only the new frame counts
    assert fusion.fuse("item", probs(1.0, 0.0, 0.0), now=5.0).tolist() == [1.0, 0.0, 0.0]


def test_fusion_forgets_oldest_items_beyond_its_bound() -> None:
    fusion = ItemFusion(FusionSettings(max_items=2))
    for item in ("a", "b", "c"):
        fusion.fuse(item, probs(1.0, 0.0, 0.0), now=0.0)
    assert fusion.fuse("a", probs(0.0, 1.0, 0.0), now=0.1).tolist() == [0.0, 1.0, 0.0]


def test_line_target_purity_must_match_the_card() -> None:
    line = LineSettings(model="m", target_purity=0.98)
    assert SortPolicy(line, CLASSES, CARD).describe()["copper"]["threshold"] == 0.9
    with pytest.raises(ValueError, match="--target-purity 0.95"):
        SortPolicy(line.model_copy(update={"target_purity": 0.95}), CLASSES, CARD)
    with pytest.raises(ValueError, match="no card"):
        SortPolicy(line, CLASSES, None)


def test_a_tie_goes_to_the_last_tied_class_and_values_are_plain_floats() -> None:
    policy = SortPolicy(LineSettings(model="m", top_k=3, min_confidence=0.3), CLASSES)
    verdict = policy.decide(probs(0.4, 0.2, 0.4))
    assert (verdict.class_name, verdict.margin) == ("plastic", 0.0)
    assert [name for name, _ in verdict.top_k] == ["plastic", "copper", "steel"]
    assert all(type(p) is float for _, p in verdict.top_k)  # JSON-ready, no NumPy scalars
    assert type(verdict.confidence) is float
