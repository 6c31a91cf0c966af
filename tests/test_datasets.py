"""Sample loading and the leak-free split (no torch)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from scrapvision.datasets import (
    DatasetError, class_names, fingerprint, load_samples, write_split,
)

CLASSES = ("alu", "brass", "copper")


def _write_image(path: Path, seed: int, quality: int = 95) -> None:
    """A random blocky image: different seeds give images far apart in dHash."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    image = cv2.resize(blocks, (48, 48), interpolation=cv2.INTER_NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, quality])


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    """20 distinct images per class, plus an exact copy and a re-encoded near-copy of some."""
    root = tmp_path / "data"
    for c, label in enumerate(CLASSES):
        for i in range(20):
            _write_image(root / label / f"{i:02d}.jpg", seed=100 * c + i)
        (root / label / "copy.jpg").write_bytes((root / label / "00.jpg").read_bytes())
        _write_image(root / label / "near.jpg", seed=100 * c + 1, quality=60)
    (root / "notes.txt").write_text("not an image")
    return root


def test_split_keeps_exact_and_near_duplicates_together(image_root: Path) -> None:
    for seed in range(5):
        samples = {s.path.relative_to(image_root).as_posix(): s
                   for s in load_samples([image_root], seed=seed)}
        for label in CLASSES:
            original, copy = samples[f"{label}/00.jpg"], samples[f"{label}/copy.jpg"]
            assert (copy.group, copy.split) == (original.group, original.split)
            original, near = samples[f"{label}/01.jpg"], samples[f"{label}/near.jpg"]
            assert (near.group, near.split) == (original.group, original.split)
            assert samples[f"{label}/02.jpg"].group != original.group


def test_split_is_stratified_and_seeded(image_root: Path) -> None:
    samples = load_samples([image_root], seed=3)
    per_class = Counter((s.label, s.split) for s in samples)
    for label in CLASSES:  # 22 images, 20 groups: 70/15/15 -> 15-16 / 3 / 3
        assert 14 <= per_class[label, "train"] <= 16
        assert 3 <= per_class[label, "val"] <= 4
        assert 3 <= per_class[label, "test"] <= 4
    assert samples == load_samples([image_root], seed=3)
    assert [s.split for s in samples] != [s.split for s in load_samples([image_root], seed=4)]


def test_class_names_are_the_union_of_roots(image_root: Path, tmp_path: Path) -> None:
    extra = tmp_path / "qa_export"
    _write_image(extra / "steel" / "a.jpg", seed=999)
    samples = load_samples([image_root, extra])
    assert class_names(samples) == sorted([*CLASSES, "steel"])


def test_written_split_reloads_identically(image_root: Path, tmp_path: Path) -> None:
    samples = load_samples([image_root], seed=1)
    split_csv = write_split(samples, tmp_path / "run" / "split.csv")
    reloaded = load_samples([image_root], split_csv)
    assert sorted(reloaded, key=str) == sorted(samples, key=str)
    assert fingerprint(reloaded) == fingerprint(samples)


def test_fingerprint_changes_with_labels_split_and_bytes(image_root: Path) -> None:
    samples = load_samples([image_root], seed=1)
    base = fingerprint(samples)
    relabelled = [samples[0].__class__(s.path, "other", s.split, s.group) if i == 0 else s
                  for i, s in enumerate(samples)]
    assert fingerprint(relabelled) != base
    moved = [s.__class__(s.path, s.label, "test" if s.split == "train" else "train", s.group)
             for s in samples]
    assert fingerprint(moved) != base
    _write_image(samples[0].path, seed=12345)
    assert fingerprint(samples) != base


def test_bad_inputs_give_clear_errors(image_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a directory"):
        load_samples([tmp_path / "missing"])
    with pytest.raises(DatasetError, match="no images"):
        (tmp_path / "empty" / "cls").mkdir(parents=True)
        load_samples([tmp_path / "empty"])
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\nalu/00.jpg,alu\n")
    with pytest.raises(DatasetError, match="missing column"):
        load_samples([image_root], bad)
    bad.write_text("file,label,split\nalu/00.jpg,alu,holdout\n")
    with pytest.raises(DatasetError, match="holdout"):
        load_samples([image_root], bad)
    bad.write_text("file,label,split\nalu/gone.jpg,alu,train\n")
    with pytest.raises(DatasetError, match="gone.jpg"):
        load_samples([image_root], bad)


def test_roots_whose_class_file_paths_collide_are_refused(image_root: Path,
                                                           tmp_path: Path) -> None:
    """split.csv names an image by CLASS/file: two roots with `alu/00.jpg` cannot both be
    written and read back, so the second would silently become a copy of the first."""
    extra = tmp_path / "qa_export"
    for seed, name in enumerate(("00.jpg", "01.jpg", "new.jpg"), start=5000):
        _write_image(extra / "alu" / name, seed=seed)  # other images, same names
    with pytest.raises(DatasetError, match=r"alu/00\.jpg.*alu/01\.jpg") as caught:
        load_samples([image_root, extra])
    assert "new.jpg" not in str(caught.value)
    assert str(extra) in str(caught.value)
