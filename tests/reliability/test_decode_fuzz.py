"""Hostile frames: random and mutated JPEG/PNG bytes through `decode_frame`.

The contract under fuzzing: a frame is either decoded to a uint8 (H, W, 3) array of the
requested size or refused with `DecodeError` carrying a 4xx status -- never another
exception, never a hang, and never a pixel buffer larger than the checked header allows
(the decoder must read the same dimensions `header_size` checked, or a crafted header
could slip a bomb past the check).
"""

from __future__ import annotations

import faulthandler
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import simplejpeg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scrapvision import decode
from scrapvision.decode import MAX_PIXELS, DecodeError, decode_frame, header_size

from .conftest import examples

TARGET = (16, 16)
CLIENT_ERRORS = {400, 413, 415}
HANG_GUARD_SECONDS = 300  # a hung decoder dumps its stack and ends the run instead of blocking CI


def _encode(image: np.ndarray, fmt: str, params: tuple[int, ...] = ()) -> bytes:
    ok, buffer = cv2.imencode(fmt, image, list(params))
    assert ok
    return buffer.tobytes()


def _seeds() -> list[bytes]:
    """Valid frames of the layouts a decoder meets: baseline, progressive, restart markers,
    4:4:4 and greyscale JPEG; 8/16-bit, grey and alpha PNG."""
    rng = np.random.default_rng(6)
    noisy = rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)
    smooth = cv2.resize(noisy, (64, 48), interpolation=cv2.INTER_CUBIC)
    return [
        _encode(noisy, ".jpg"),
        _encode(smooth, ".jpg", (cv2.IMWRITE_JPEG_PROGRESSIVE, 1)),
        _encode(smooth, ".jpg", (cv2.IMWRITE_JPEG_RST_INTERVAL, 2)),
        _encode(noisy, ".jpg", (cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                                cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444)),
        _encode(noisy[:, :, 0], ".jpg"),
        _encode(noisy, ".png"),
        _encode(noisy.astype(np.uint16) * 257, ".png"),
        _encode(noisy[:, :, 0], ".png"),
        _encode(np.dstack([noisy, noisy[:, :, :1]]), ".png"),
    ]


SEEDS = _seeds()


def _set_dimensions(data: bytearray, width: int, height: int) -> None:
    """Overwrite the size in the first JPEG SOF or the PNG IHDR (no-op if there is none)."""
    if data[:4] == b"\x89PNG" and len(data) >= 24:
        data[16:24] = struct.pack(">II", width % 2**32, height % 2**32)
        return
    for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):
        at = data.find(marker)
        if at >= 0 and at + 9 <= len(data):
            data[at + 5 : at + 9] = struct.pack(">HH", height % 2**16, width % 2**16)
            return


SIDES = st.sampled_from([0, 1, 60_000, 65_535, 2**31, 2**32 - 1]) | st.integers(0, 70_000)


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    """A valid seed after a few bit flips, byte edits, cuts, insertions, splices with
    another seed, or absurd dimensions written into its header."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        operation = draw(st.sampled_from(
            ["flip", "byte", "truncate", "insert", "delete", "splice", "dimensions"]))
        magic = 8 if data[:4] == b"\x89PNG" else 3  # mostly past it: a bad magic is one case
        at = draw(st.integers(0, max(0, len(data) - 1)) if operation == "truncate"
                  else st.integers(min(magic, len(data)), max(magic, len(data) - 1)))
        if operation == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif operation == "byte" and at < len(data):
            data[at] = draw(st.sampled_from([0x00, 0xFF, 0xD9, 0xDA, 0xC0, 0x80]))
        elif operation == "truncate":
            del data[at:]
        elif operation == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif operation == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif operation == "splice":
            other = draw(st.sampled_from(SEEDS))
            data = data[:at] + other[draw(st.integers(0, len(other) - 1)):]
        elif operation == "dimensions":
            _set_dimensions(data, draw(SIDES), draw(SIDES))
    return bytes(data)


random_frames = st.one_of(
    st.binary(max_size=512),
    st.binary(max_size=512).map(lambda tail: b"\xff\xd8\xff" + tail),
    st.binary(max_size=512).map(lambda tail: b"\x89PNG\r\n\x1a\n" + tail),
)


@pytest.fixture(autouse=True)
def hang_guard() -> Iterator[None]:
    faulthandler.dump_traceback_later(HANG_GUARD_SECONDS, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def decoder_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int]]:
    """(height, width, scale factor) each decoder call was asked to produce."""
    calls: list[tuple[int, int, int]] = []
    real_jpeg, real_cv2 = simplejpeg.decode_jpeg, cv2.imdecode

    def spy_jpeg(data, colorspace, min_factor=1, min_height=0, min_width=0, **kwargs):
        calls.append((min_height, min_width, int(min_factor)))
        return real_jpeg(data, colorspace, min_factor=min_factor, min_height=min_height,
                         min_width=min_width, **kwargs)

    def spy_cv2(buffer, flags):
        image = real_cv2(buffer, flags)
        if image is not None:
            calls.append((*image.shape[:2], 1))
        return image

    monkeypatch.setattr(decode.simplejpeg, "decode_jpeg", spy_jpeg)
    monkeypatch.setattr(decode.cv2, "imdecode", spy_cv2)
    return calls


def _check_contract(data: bytes, calls: list[tuple[int, int, int]]) -> str:
    """Decode under the contract; returns the outcome ("decoded" or "refused <status>")."""
    calls.clear()
    try:
        image = decode_frame(data, TARGET)
    except DecodeError as error:
        assert error.status in CLIENT_ERRORS, error
        outcome = f"refused {error.status}"
    else:
        assert image.shape == (*TARGET, 3) and image.dtype == np.uint8
        outcome = "decoded"
    if calls:  # the decoder ran: it must have been bounded by the checked header
        width, height = header_size(data)
        assert width * height <= MAX_PIXELS
        for call_height, call_width, factor in calls:
            assert call_height * factor <= height + factor
            assert call_width * factor <= width + factor
    if data[:3] == b"\xff\xd8\xff":
        _check_same_jpeg_header(data)
    return outcome


def _check_same_jpeg_header(data: bytes) -> None:
    """Where both parse a JPEG header, libjpeg and `header_size` read the same size."""
    try:
        width, height = header_size(data)
        libjpeg_height, libjpeg_width, *_ = simplejpeg.decode_jpeg_header(data)
    except (DecodeError, ValueError):
        return
    assert (libjpeg_width, libjpeg_height) == (width, height)


FUZZ = settings(max_examples=examples(3000, 50_000), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@FUZZ
@given(data=mutated_frames())
def test_mutated_frames_decode_or_are_refused_with_4xx(data: bytes, decoder_calls,
                                                        count_case) -> None:
    count_case(_check_contract(data, decoder_calls))


@FUZZ
@given(data=random_frames)
def test_random_bytes_decode_or_are_refused_with_4xx(data: bytes, decoder_calls,
                                                     count_case) -> None:
    count_case(_check_contract(data, decoder_calls))


@settings(max_examples=examples(300, 5_000), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.sampled_from(SEEDS), width=st.integers(1, 2**16 - 1),
       height=st.integers(1, 2**16 - 1))
def test_oversized_headers_are_refused_before_decoding(seed: bytes, width: int, height: int,
                                                       no_decoding, count_case) -> None:
    count_case()
    if width <= decode.MAX_SIDE and height <= decode.MAX_SIDE and width * height <= MAX_PIXELS:
        return  # a legal size: covered by the mutation test
    data = bytearray(seed)
    _set_dimensions(data, width, height)
    with pytest.raises(DecodeError, match="exceeds the limit") as error:
        decode_frame(bytes(data), TARGET)
    assert error.value.status == 413


@pytest.mark.parametrize("fmt", [".jpg", ".png"])
def test_60000_square_bomb_is_refused_from_its_header(fmt: str, no_decoding) -> None:
    data = bytearray(_encode(np.zeros((8, 8, 3), np.uint8), fmt))
    _set_dimensions(data, 60_000, 60_000)
    with pytest.raises(DecodeError, match="60000x60000 exceeds the limit") as error:
        decode_frame(bytes(data), TARGET)
    assert error.value.status == 413


def test_jpeg_with_too_many_scans_is_refused_before_decoding(no_decoding) -> None:
    """Each progressive scan is a pass over the whole image: a 350 KB 16 MP JPEG with 100
    scans took 0.24 s to decode here against 0.03 s in one scan, so thousands of scans in
    a small file would cost seconds of CPU per frame."""
    progressive = SEEDS[1]
    first_scan, end = progressive.index(b"\xff\xda"), progressive.rindex(b"\xff\xd9")
    scans = progressive[first_scan:end]
    copies = decode.MAX_JPEG_SCANS // scans.count(b"\xff\xda") + 1
    bomb = progressive[:first_scan] + scans * copies + b"\xff\xd9"
    with pytest.raises(DecodeError, match="scans, more than the limit") as error:
        decode_frame(bomb, TARGET)
    assert error.value.status == 413


# The largest frame the limits let through in the costliest layout: a 16-bit RGBA PNG of
# MAX_PIXELS, a few hundred KB. Written by one process, decoded by a fresh one, so the
# decoding process's peak RSS is the decoder's alone.
WRITE_LARGEST = """
import sys
import cv2, numpy as np
from scrapvision.decode import MAX_PIXELS
width = 16_384
image = np.zeros((MAX_PIXELS // width, width, 4), np.uint16)
cv2.imwrite(sys.argv[1], image)
"""
DECODE = """
import re, sys
from pathlib import Path
from scrapvision.decode import decode_frame

def peak_rss():  # VmHWM, not ru_maxrss: that one keeps the forking parent's peak
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text())[1]) * 1024

data = Path(sys.argv[1]).read_bytes()
before = peak_rss()
decode_frame(data, (224, 224))
print(len(data), before, peak_rss())
"""
BYTES_PER_PIXEL_BOUND = 8  # 8-bit BGR output (3) + resize and conversion buffers


def _python(code: str, *args: str) -> str:
    run = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr
    return run.stdout


@pytest.mark.skipif(not Path("/proc/self/status").is_file(),
                    reason="peak RSS is read from Linux /proc/self/status")
def test_largest_legal_frame_decodes_within_a_memory_bound(tmp_path: Path) -> None:
    path = tmp_path / "largest.png"
    _python(WRITE_LARGEST, str(path))
    size, before, peak = map(int, _python(DECODE, str(path)).split())
    grown = peak - before
    print(f"\nlargest legal frame: {size / 1024:.0f} KB PNG, decode peak +{grown / 2**20:.0f} MB "
          f"({before / 2**20:.0f} -> {peak / 2**20:.0f} MB)")
    assert grown <= BYTES_PER_PIXEL_BOUND * MAX_PIXELS


def _noisy_jpeg() -> bytes:
    noisy = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    return _encode(noisy, ".jpg")


def test_truncated_jpeg_with_end_marker_appended_is_refused_not_grey_filled() -> None:
    data = _noisy_jpeg()
    with pytest.raises(DecodeError, match="truncated JPEG") as error:
        decode_frame(data[: len(data) // 2] + b"\xff\xd9", TARGET)
    assert error.value.status == 400


@pytest.mark.parametrize("tail", [b"\x00" * 7, b"trailing camera metadata", b"\xff\xd9"])
def test_bytes_after_the_jpeg_end_marker_are_ignored(tail: bytes) -> None:
    data = _noisy_jpeg()
    assert np.array_equal(decode_frame(data + tail, TARGET), decode_frame(data, TARGET))


@pytest.mark.parametrize("factor", [1, 2, 4, 8])
def test_jpeg_pixels_match_opencv_at_each_scale(factor: int) -> None:
    """Strict decoding changed the decoder, not the pixels models were trained on."""
    data = _encode(cv2.resize(np.random.default_rng(1).integers(0, 255, (30, 40, 3), np.uint8),
                              (336, 248)), ".jpg")
    flag = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2,
            4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}[factor]
    expected = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    target = expected.shape[:2]
    assert decode.reduction_factor(336, 248, target) == factor
    assert np.array_equal(decode_frame(data, target), expected)
