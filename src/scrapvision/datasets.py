"""Labelled images on disk -> a list of samples with a leak-free train/val/test split.

Torch-free (numpy/opencv/csv only), so evaluation and the QA export can use it too.

Data is ImageFolder layout, `<root>/<CLASS>/<image>`; several roots may be merged (a data
set plus a QA export) and the class list is the union of their folder names. A `split.csv`
(columns `file,label,split[,group]`, paths relative to a root) is used as given. Without
one, `<CLASS>/<image>` must be unique across the roots (the run's split.csv names images
by it), and images are grouped so that byte-identical copies (sha256) and near-identical
ones (64-bit dHash within `NEAR_DUPLICATE_BITS`) always land in the same split: otherwise
a copy of a test image would sit in train and inflate the test score.
"""

from __future__ import annotations

import csv
import hashlib
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})  # what decode_frame accepts
NEAR_DUPLICATE_BITS = 4
SPLIT_COLUMNS = ("file", "label", "split", "group")


@dataclass(frozen=True)
class Sample:
    path: Path
    label: str
    split: str
    group: str

    @property
    def relative_path(self) -> str:
        """`<CLASS>/<image>`: the path inside its ImageFolder root, stable across machines."""
        return relative_path(self.path)


def relative_path(path: Path) -> str:
    """`<CLASS>/<image>` of an image at `<root>/<CLASS>/<image>`."""
    return f"{path.parent.name}/{path.name}"


class DatasetError(ValueError):
    """The data on disk or the split file cannot be used; the message says why."""


def load_samples(
    roots: Sequence[Path],
    split_csv: Path | None = None,
    *,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
) -> list[Sample]:
    """All labelled images under `roots`, each with its split and duplicate group.

    With `split_csv`, its rows are the samples (files resolved against the roots, first
    match wins); without, a stratified split by duplicate group is made with `seed`.
    """
    roots = [Path(root) for root in roots]
    if not roots:
        raise DatasetError("no data roots given")
    for root in roots:
        if not root.is_dir():
            raise DatasetError(f"data root {root} is not a directory")
    if split_csv is not None:
        return _read_split(roots, Path(split_csv))
    images = [(path, label) for root in roots for path, label in _scan_image_folder(root)]
    if not images:
        raise DatasetError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {roots}")
    _check_unique_relative_paths([path for path, _ in images])
    groups = duplicate_groups([path for path, _ in images])
    splits = _stratified_group_split([label for _, label in images], groups, seed, fractions)
    return [
        Sample(path=path, label=label, split=split, group=f"g{group}")
        for (path, label), group, split in zip(images, groups, splits)
    ]


def class_names(samples: Iterable[Sample]) -> list[str]:
    """Sorted class list: the model's output order."""
    return sorted({sample.label for sample in samples})


def write_split(samples: Iterable[Sample], path: Path) -> Path:
    """Write `file,label,split,group` (file relative to its root) so a run can be redone."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(SPLIT_COLUMNS)
        for sample in samples:
            writer.writerow([sample.relative_path, sample.label, sample.split, sample.group])
    return path


def fingerprint(samples: Iterable[Sample]) -> str:
    """The training data fingerprint: sha256 over (relative path, label, split, file sha256).

    Two runs with the same fingerprint saw the same bytes with the same labels and split.
    """
    digest = hashlib.sha256()
    for sample in sorted(samples, key=lambda s: (s.relative_path, s.label, s.split)):
        file_hash = hashlib.sha256(sample.path.read_bytes()).hexdigest()
        digest.update(f"{sample.relative_path}\t{sample.label}\t{sample.split}\t{file_hash}\n"
                      .encode())
    return digest.hexdigest()


def dhash(path: Path) -> int:
    """64-bit difference hash: signs of horizontal gradients of an 9x8 grey thumbnail."""
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise DatasetError(f"cannot decode image {path}")
    thumb = cv2.resize(image, (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (thumb[:, 1:] > thumb[:, :-1]).flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def duplicate_groups(paths: Sequence[Path], max_bits: int = NEAR_DUPLICATE_BITS) -> list[int]:
    """Group id per path; equal sha256 or dHash within `max_bits` bits share a group."""
    parent = list(range(len(paths)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        parent[find(i)] = find(j)

    first_with_hash: dict[str, int] = {}
    for i, path in enumerate(paths):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        union(i, first_with_hash.setdefault(digest, i))
    hashes = np.array([dhash(path) for path in paths], dtype=np.uint64)
    for i in range(len(paths) - 1):
        distances = np.bitwise_count(hashes[i + 1:] ^ hashes[i])
        for j in np.flatnonzero(distances <= max_bits):
            union(i, i + 1 + int(j))
    roots = [find(i) for i in range(len(paths))]
    renumber = {root: n for n, root in enumerate(dict.fromkeys(roots))}
    return [renumber[root] for root in roots]


def _check_unique_relative_paths(paths: Sequence[Path], shown: int = 3) -> None:
    """Refuse two roots holding the same `<CLASS>/<image>`.

    The run's split.csv names images by that path and resolves it against the roots in
    order, so the second root's image would be written as a duplicate row and read back
    as the first root's file: an image lost, another counted twice.
    """
    first: dict[str, Path] = {}
    clashes: list[str] = []
    for path in paths:
        relative = relative_path(path)
        if relative in first:
            clashes.append(f"{relative} ({first[relative].parent.parent} and "
                           f"{path.parent.parent})")
        first.setdefault(relative, path)
    if clashes:
        more = f" and {len(clashes) - shown} more" if len(clashes) > shown else ""
        raise DatasetError(
            f"{len(clashes)} image path(s) occur under more than one root: "
            f"{'; '.join(clashes[:shown])}{more}. A run's split.csv names images by "
            "CLASS/file, so give the images distinct file names, or train from a split.csv "
            "(each of its rows takes the file from the first root that has it)")


def _scan_image_folder(root: Path) -> list[tuple[Path, str]]:
    images = [
        (path, class_dir.name)
        for class_dir in sorted(p for p in root.iterdir() if p.is_dir())
        for path in sorted(class_dir.iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    ]
    return images


def _stratified_group_split(
    labels: Sequence[str], groups: Sequence[int], seed: int,
    fractions: tuple[float, float, float],
) -> list[str]:
    """Split whole groups, class by class, towards `fractions` of each class's images.

    A group is filed under the class of its first image (mixed-label groups are rare label
    noise); groups are shuffled with `seed`, then each goes to the split furthest below its
    target count, so every class gets its share of train, val and test.
    """
    if len(fractions) != len(SPLITS) or any(f < 0 for f in fractions) or not sum(fractions):
        raise DatasetError(f"fractions must be three non-negative numbers, got {fractions}")
    total = sum(fractions)
    members: dict[int, list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        members[group].append(index)
    groups_by_class: dict[str, list[int]] = defaultdict(list)
    for group, indices in members.items():
        groups_by_class[labels[indices[0]]].append(group)

    rng = random.Random(seed)
    split_of_group: dict[int, str] = {}
    for label in sorted(groups_by_class):
        class_groups = groups_by_class[label]
        rng.shuffle(class_groups)
        size = sum(len(members[g]) for g in class_groups)
        targets = [size * f / total for f in fractions]
        counts = [0] * len(SPLITS)
        for group in class_groups:
            deficit = [target - count for target, count in zip(targets, counts)]
            choice = int(np.argmax(deficit))
            split_of_group[group] = SPLITS[choice]
            counts[choice] += len(members[group])
    return [split_of_group[group] for group in groups]


def _read_split(roots: Sequence[Path], split_csv: Path) -> list[Sample]:
    if not split_csv.is_file():
        raise DatasetError(f"split file {split_csv} does not exist")
    with split_csv.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"file", "label", "split"} - set(reader.fieldnames or ())
        if missing:
            raise DatasetError(f"{split_csv}: missing column(s) {sorted(missing)}; "
                               f"expected {','.join(SPLIT_COLUMNS)}")
        rows = list(reader)
    samples = []
    for line, row in enumerate(rows, start=2):
        if row["split"] not in SPLITS:
            raise DatasetError(f"{split_csv}:{line}: split '{row['split']}' is not one of {SPLITS}")
        path = next((root / row["file"] for root in roots if (root / row["file"]).is_file()), None)
        if path is None:
            raise DatasetError(f"{split_csv}:{line}: {row['file']} not found under {list(roots)}")
        samples.append(Sample(path=path, label=row["label"], split=row["split"],
                              group=row.get("group") or row["file"]))
    if not samples:
        raise DatasetError(f"{split_csv} lists no images")
    return samples
