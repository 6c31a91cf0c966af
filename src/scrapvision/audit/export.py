"""Close the loop: reviewed review-frames become an ImageFolder data set for retraining.

`DIR/<label>/<frame hash>.jpg`, the label being the latest review's (the corrected class
when relabelled), plus `DIR/manifest.jsonl` saying where each image came from. Optionally
an existing ImageFolder root is merged in, so one root holds both; `scrapvision train`
also accepts the export and the original root side by side. Files are hard-linked when
possible (frames are immutable, named by their hash) and copied otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from scrapvision.audit import queries
from scrapvision.audit.frames import FrameStore
from scrapvision.datasets import IMAGE_SUFFIXES

MANIFEST = "manifest.jsonl"


class ExportError(ValueError):
    """The export cannot be written where asked; the message says why."""


@dataclass(slots=True)
class ExportResult:
    out: Path
    images: int = 0  # reviewed frames written
    merged: int = 0  # images taken over from --merge-with
    per_label: dict[str, int] = field(default_factory=dict)
    conflicting: int = 0  # one frame, reviewed with different labels: left out
    missing: int = 0  # frame file pruned or lost
    unsafe_labels: int = 0  # labels that cannot be a folder name


def export_dataset(engine: Engine, frame_store: FrameStore, out: Path, *,
                   merge_with: Path | None = None, line: str | None = None,
                   overwrite: bool = False) -> ExportResult:
    """Write the reviewed frames (of `line`, or all) as an ImageFolder data set at `out`."""
    out = Path(out)
    if merge_with is not None:  # before _prepare, which may delete the earlier export
        _check_merge_source(Path(merge_with), out)
    _prepare(out, overwrite)
    result = ExportResult(out=out)
    entries = [*_reviewed_frames(engine, frame_store, out, line, result)]
    if merge_with is not None:
        entries += _merge(Path(merge_with), out, result)
    with (out / MANIFEST).open("w") as manifest:
        for entry in entries:
            manifest.write(json.dumps(entry) + "\n")
    counts: dict[str, int] = defaultdict(int)
    for entry in entries:
        counts[entry["label"]] += 1
    result.per_label = dict(sorted(counts.items()))
    return result


def _prepare(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / MANIFEST).is_file():
            raise ExportError(f"{out} is not empty and is not an earlier export; "
                              "choose a new folder")
        if not overwrite:
            raise ExportError(f"{out} holds an earlier export; pass --overwrite to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _safe_folder_name(label: str) -> bool:
    return bool(label) and not label.startswith(".") and not any(c in label for c in "/\\\0")


def _reviewed_frames(engine: Engine, frame_store: FrameStore, out: Path, line: str | None,
                     result: ExportResult) -> list[dict[str, Any]]:
    where = queries.DecisionFilter(line=line, reviewed=True, has_frame=True)
    by_hash: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in queries.iterate(engine, where):
        by_hash[item["frame_hash"]].append(item)
    entries = []
    for frame_hash, items in sorted(by_hash.items()):
        if len({item["review"]["label"] for item in items}) > 1:
            result.conflicting += len(items)
            continue
        item = max(items, key=lambda candidate: candidate["review"]["time"])
        label = item["review"]["label"]
        if not _safe_folder_name(label):
            result.unsafe_labels += 1
            continue
        source = frame_store.path(frame_hash)
        if not source.is_file():
            result.missing += 1
            continue
        relative = f"{label}/{frame_hash}.jpg"
        _link_or_copy(source, out / relative)
        review = item["review"]
        entries.append({
            "file": relative, "decision_id": item["id"], "original_class": item["class_name"],
            "label": label,
            "label_source": "confirmed" if review["verdict"] == "confirm" else "relabelled",
            "reviewer": review["reviewer"],
            "time": datetime.fromtimestamp(review["time"], UTC).isoformat(),
            "line": item["line"], "model": f"{item['model_name']}:{item['model_version']}",
        })
        result.images += 1
    return entries


def _check_merge_source(root: Path, out: Path) -> None:
    """Refuse a merge source that is, holds or lies inside the output folder: replacing the
    output would delete it, or the export would merge itself."""
    if not root.is_dir():
        raise ExportError(f"--merge-with {root} is not a directory")
    source, target = root.resolve(), out.resolve()
    if source == target or source.is_relative_to(target) or target.is_relative_to(source):
        raise ExportError(f"--merge-with {root} and the output folder {out} must not be the "
                          "same folder or one inside the other")


def _merge(root: Path, out: Path, result: ExportResult) -> list[dict[str, Any]]:
    """Take over `root`'s ImageFolder images; keeps its manifest entries when it has one."""
    known: dict[str, dict[str, Any]] = {}
    if (root / MANIFEST).is_file():
        with (root / MANIFEST).open() as manifest:
            known = {entry["file"]: entry for entry in map(json.loads, manifest)}
    entries = []
    for class_dir in sorted(path for path in root.iterdir() if path.is_dir()):
        for image in sorted(class_dir.iterdir()):
            if image.suffix.lower() not in IMAGE_SUFFIXES or not image.is_file():
                continue
            relative = f"{class_dir.name}/{image.name}"
            if (out / relative).exists():  # the same reviewed frame, exported again
                continue
            _link_or_copy(image, out / relative)
            entries.append(known.get(relative) or {
                "file": relative, "label": class_dir.name, "label_source": "dataset",
                "source": str(image)})
            result.merged += 1
    return entries


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(source, target)
