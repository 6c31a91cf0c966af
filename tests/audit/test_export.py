"""export-dataset: reviewed frames as an ImageFolder the trainer's loader accepts."""

from __future__ import annotations

import json

import cv2
import pytest
from tinymodel import colour_frame
from typer.testing import CliRunner

from scrapvision.audit import reviews
from scrapvision.audit.export import ExportError, export_dataset
from scrapvision.cli import app
from scrapvision.datasets import load_samples

T0 = 1_795_300_000.0


@pytest.fixture
def reviewed(store, make_decision):
    """Four decisions with frames: r confirmed, g relabelled to blue, b unreviewed, late."""
    frames = {"r": "red", "g": "green", "b": "blue"}
    for minute, (frame_id, colour) in enumerate(frames.items()):
        store.submit(make_decision(time=T0 + 60 * minute, frame_id=frame_id, class_name=colour,
                                   margin=0.05), colour_frame(colour, 640, 480))
    assert store.flush()
    from scrapvision.audit import queries

    ids = {item["frame_id"]: item["id"]
           for item in queries.page(store.engine, queries.DecisionFilter())["items"]}
    reviews.add_review(store.engine, ids["r"], "anna", "confirm")
    reviews.add_review(store.engine, ids["g"], "anna", "relabel", "red")
    reviews.add_review(store.engine, ids["g"], "ben", "relabel", "blue")  # latest wins
    return ids


def _manifest(out):
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_export_writes_imagefolder_with_latest_labels_and_manifest(store, reviewed, tmp_path):
    out = tmp_path / "export"
    result = export_dataset(store.engine, store.frame_store, out)
    assert (result.images, result.per_label) == (2, {"blue": 1, "red": 1})
    manifest = {entry["decision_id"]: entry for entry in _manifest(out)}
    red, relabelled = manifest[reviewed["r"]], manifest[reviewed["g"]]
    assert red["label"] == "red" and red["label_source"] == "confirmed"
    assert relabelled["original_class"] == "green" and relabelled["label"] == "blue"
    assert relabelled["label_source"] == "relabelled" and relabelled["reviewer"] == "ben"
    assert relabelled["file"].startswith("blue/") and relabelled["file"].endswith(".jpg")
    image = cv2.imread(str(out / relabelled["file"]))
    assert image.shape == (240, 320, 3)
    samples = load_samples([out])  # what `scrapvision train` reads
    assert sorted(sample.label for sample in samples) == ["blue", "red"]


def test_merge_with_an_existing_root(store, reviewed, tmp_path):
    root = tmp_path / "dataset"
    for label in ("red", "metal"):
        (root / label).mkdir(parents=True)
        (root / label / f"{label}-1.jpg").write_bytes(colour_frame("red"))
    (root / "split.csv").write_text("file,label,split\n")  # not an image: not taken over
    out = tmp_path / "merged"
    result = export_dataset(store.engine, store.frame_store, out, merge_with=root)
    assert (result.images, result.merged) == (2, 2)
    assert result.per_label == {"blue": 1, "metal": 1, "red": 2}
    merged = [entry for entry in _manifest(out) if entry["label_source"] == "dataset"]
    assert sorted(entry["file"] for entry in merged) == ["metal/metal-1.jpg", "red/red-1.jpg"]
    assert not (out / "split.csv").exists()
    assert len(load_samples([out])) == 4
    again = tmp_path / "again"  # an export merged into a new export keeps its provenance
    export_dataset(store.engine, store.frame_store, again, merge_with=out)
    sources = sorted(entry["label_source"] for entry in _manifest(again))
    assert sources == ["confirmed", "dataset", "dataset", "relabelled"]


def test_export_refuses_to_clobber_foreign_folders(store, reviewed, tmp_path):
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not an earlier export"):
        export_dataset(store.engine, store.frame_store, foreign)
    out = tmp_path / "export"
    export_dataset(store.engine, store.frame_store, out)
    with pytest.raises(ExportError, match="--overwrite"):
        export_dataset(store.engine, store.frame_store, out)
    assert export_dataset(store.engine, store.frame_store, out, overwrite=True).images == 2


def test_a_merge_source_overlapping_the_output_is_refused_before_anything_is_deleted(
        store, reviewed, tmp_path):
    out = tmp_path / "export"
    export_dataset(store.engine, store.frame_store, out)
    before = sorted(path.relative_to(out) for path in out.rglob("*"))
    for source in (out, out / "red", tmp_path):  # itself, inside it, holding it
        with pytest.raises(ExportError, match="one inside the other"):
            export_dataset(store.engine, store.frame_store, out, merge_with=source,
                           overwrite=True)
    assert sorted(path.relative_to(out) for path in out.rglob("*")) == before


def test_conflicting_reviews_of_one_frame_are_left_out(store, make_decision, tmp_path):
    frame = colour_frame("red")
    for minute in range(2):  # the same picture twice, judged differently
        store.submit(make_decision(time=T0 + 60 * minute, margin=0.0), frame)
    assert store.flush()
    from scrapvision.audit import queries

    first, second = queries.page(store.engine, queries.DecisionFilter())["items"]
    assert first["frame_hash"] == second["frame_hash"]
    reviews.add_review(store.engine, first["id"], "anna", "confirm")
    reviews.add_review(store.engine, second["id"], "anna", "relabel", "blue")
    result = export_dataset(store.engine, store.frame_store, tmp_path / "out")
    assert (result.images, result.conflicting) == (0, 2)


def test_cli_export_dataset(audit_settings, store, reviewed, tmp_path):
    out = tmp_path / "cli-export"
    arguments = ["audit", "export-dataset", "--out", str(out), "--url", audit_settings.url,
                 "--frames-dir", str(audit_settings.frames_dir)]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert "2 reviewed frames" in result.output
    assert len(_manifest(out)) == 2
    again = CliRunner().invoke(app, arguments)
    assert again.exit_code == 1 and "--overwrite" in again.output
