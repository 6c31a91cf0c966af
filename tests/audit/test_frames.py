"""Frame sampling caps and the content-addressed frame store."""

from __future__ import annotations

import random

import cv2
import pytest
from tinymodel import colour_frame

from scrapvision.audit.frames import FrameSampler, FrameStore
from scrapvision.audit.settings import FrameSampling
from scrapvision.decode import DecodeError

MINUTE = 1_795_300_000 // 60 * 60


def _sampler(**settings) -> FrameSampler:
    return FrameSampler(FrameSampling(**settings), rng=random.Random(0))


def test_low_margin_and_recirculated_frames_are_kept_with_their_reason(make_decision):
    sampler = _sampler(per_class_per_minute=0, random_rate=0)
    assert sampler.reason(make_decision(time=MINUTE, margin=0.1)) == "low_margin"
    assert sampler.reason(make_decision(time=MINUTE, action="recirculate")) == "recirculated"
    assert sampler.reason(make_decision(time=MINUTE, margin=0.9)) is None
    assert sampler.reason(make_decision(time=MINUTE, action="late", class_name=None,
                                        margin=None)) is None


def test_first_frames_of_each_class_per_minute_then_random(make_decision):
    sampler = _sampler(per_class_per_minute=2, random_rate=0)
    reasons = [sampler.reason(make_decision(time=MINUTE + i, class_name="red"))
               for i in range(4)]
    assert reasons == ["class_sample", "class_sample", None, None]
    assert sampler.reason(make_decision(time=MINUTE + 5, class_name="blue")) == "class_sample"
    assert sampler.reason(make_decision(time=MINUTE + 60, class_name="red")) == "class_sample"
    always = _sampler(per_class_per_minute=0, random_rate=1.0)
    assert always.reason(make_decision(time=MINUTE)) == "random"


def test_cap_per_line_per_minute_bounds_all_reasons(make_decision):
    sampler = _sampler(max_per_minute=3)
    kept = [sampler.reason(make_decision(time=MINUTE + i, margin=0.0)) for i in range(5)]
    assert kept.count("low_margin") == 3 and kept[3:] == [None, None]
    assert sampler.skipped_by_cap == 2
    assert sampler.reason(make_decision(time=MINUTE, line="line2", margin=0.0)) is not None
    assert sampler.reason(make_decision(time=MINUTE + 60, margin=0.0)) == "low_margin"


def test_disabled_sampling_keeps_nothing(make_decision):
    assert _sampler(enabled=False).reason(make_decision(margin=0.0)) is None


def test_frames_are_downscaled_and_content_addressed(tmp_path):
    store = FrameStore(tmp_path, longest_side=320)
    frame_hash = store.save(colour_frame("red", 640, 480, ".png"))
    path = store.path(frame_hash)
    assert path == tmp_path / frame_hash[:2] / frame_hash[2:4] / f"{frame_hash}.jpg"
    assert cv2.imread(str(path)).shape == (240, 320, 3)
    assert store.save(colour_frame("red", 640, 480, ".png")) == frame_hash  # same file
    small = store.save(colour_frame("blue", 64, 48))
    assert cv2.imread(str(store.path(small))).shape == (48, 64, 3)  # never upscaled


@pytest.mark.parametrize("bad", ["../../etc/passwd", "ab", "A" * 64, "g" * 64, "0" * 63 + "/"])
def test_only_sha256_hex_names_map_to_paths(tmp_path, bad):
    with pytest.raises(ValueError):
        FrameStore(tmp_path).path(bad)


def test_undecodable_frames_raise_decode_error(tmp_path):
    with pytest.raises(DecodeError):
        FrameStore(tmp_path).save(b"\xff\xd8\xff garbage")


def test_a_late_record_from_an_earlier_minute_does_not_reset_the_caps(make_decision):
    sampler = _sampler(max_per_minute=2)
    for seconds in (60, 61, 0, 62):  # the record at 0 s arrives after minute 1 began
        sampler.reason(make_decision(time=MINUTE + seconds, margin=0.0))
    assert sampler.skipped_by_cap == 2


def test_a_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    import pathlib

    store = FrameStore(tmp_path / "frames")

    def disk_full(path, data):
        path.open("wb").write(data[:10])  # part of it got out before the disk filled
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_bytes", disk_full)
    with pytest.raises(OSError, match="No space"):
        store.save(colour_frame("red", 64, 48))
    assert [path for path in (tmp_path / "frames").rglob("*") if path.is_file()] == []
