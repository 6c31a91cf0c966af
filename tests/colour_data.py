"""Tiny labelled data sets for evaluation tests: noisy colour frames as an ImageFolder.

Each image blends its class colour with a random other class colour (weight up to
`max_mix`), plus pixel noise. Blends past one half look like the other class, so the tiny
colour model makes some honest mistakes and calibration and thresholds have work to do.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from tinymodel import BGR, CLASSES


def write_colour_dataset(root: Path, per_split: dict[str, int] | None = None,
                         max_mix: float = 0.7, seed: int = 0,
                         size: tuple[int, int] = (40, 48)) -> Path:
    """Write `root/<class>/<split>_<n>.jpg` and `root/split.csv`; returns the csv path."""
    per_split = per_split or {"train": 4, "val": 30, "test": 30}
    rng = np.random.default_rng(seed)
    rows = []
    for label in CLASSES:
        (root / label).mkdir(parents=True, exist_ok=True)
        others = [c for c in CLASSES if c != label]
        for split, count in per_split.items():
            for n in range(count):
                mix = rng.uniform(0, max_mix)
                other = others[rng.integers(len(others))]
                colour = (1 - mix) * np.array(BGR[label]) + mix * np.array(BGR[other])
                noise = rng.normal(0, 20, (*size, 3))
                image = np.clip(colour + noise, 0, 255).astype(np.uint8)
                file = f"{label}/{split}_{n}.jpg"
                cv2.imwrite(str(root / file), image)
                rows.append((file, label, split, f"{label}-{split}-{n}"))
    split_csv = root / "split.csv"
    with split_csv.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", "split", "group"])
        writer.writerows(rows)
    return split_csv
