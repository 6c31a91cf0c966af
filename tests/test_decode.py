"""decode_frame: the one preprocessing step shared by training, evaluation and serving."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest
from tinymodel import colour_frame

from scrapvision.decode import DecodeError, decode_frame, header_size, reduction_factor


def encode(image: np.ndarray, fmt: str = ".png") -> bytes:
    ok, buf = cv2.imencode(fmt, image)
    assert ok
    return buf.tobytes()


def with_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    """The same JPEG with its frame header claiming another size (pixels unchanged)."""
    sof = data.index(b"\xff\xc0")
    return data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9 :]


def with_png_size(data: bytes, width: int, height: int) -> bytes:
    return data[:16] + struct.pack(">II", width, height) + data[24:]


@pytest.mark.parametrize("fmt", [".jpg", ".png"])
def test_decodes_to_model_size_in_bgr(fmt: str) -> None:
    image = decode_frame(colour_frame("red", 64, 48, fmt), (32, 40))
    assert image.shape == (32, 40, 3) and image.dtype == np.uint8
    assert np.allclose(image.mean(axis=(0, 1)), [0, 0, 255], atol=3)


def test_rgb_order_swaps_channels() -> None:
    image = decode_frame(colour_frame("red", fmt=".png"), (16, 16), colour_order="RGB")
    assert image[0, 0].tolist() == [255, 0, 0]


def test_unknown_colour_order_is_a_programming_error_not_silently_bgr() -> None:
    with pytest.raises(ValueError, match="colour order") as err:
        decode_frame(colour_frame("red"), (8, 8), colour_order="rgb")
    assert not isinstance(err.value, DecodeError)


def test_whole_frame_is_resized_not_cropped() -> None:
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, 40:] = 255  # right half white
    out = decode_frame(encode(image), (10, 10))
    assert out[:, :5].max() == 0 and out[:, 5:].min() == 255


@pytest.mark.parametrize("wrap", [bytearray, memoryview])
def test_accepts_buffer_types(wrap) -> None:
    data = colour_frame("green", fmt=".png")
    assert decode_frame(wrap(data), (8, 8))[0, 0].tolist() == [0, 255, 0]


@pytest.mark.parametrize("image", [
    np.full((20, 20), 200, np.uint8),  # grey
    np.full((20, 20, 4), 200, np.uint8),  # with alpha
    np.full((20, 20, 3), 50000, np.uint16),  # 16-bit
], ids=["grey", "rgba", "16bit"])
def test_other_png_layouts_become_8bit_three_channel(image: np.ndarray) -> None:
    out = decode_frame(encode(image), (10, 10))
    assert out.shape == (10, 10, 3) and out.dtype == np.uint8


@pytest.mark.parametrize("fmt", [".jpg", ".png"])
def test_header_size_reads_width_and_height(fmt: str) -> None:
    assert header_size(colour_frame("blue", 64, 48, fmt)) == (64, 48)


def test_empty_body_is_refused() -> None:
    with pytest.raises(DecodeError, match="empty") as err:
        decode_frame(b"", (8, 8))
    assert err.value.status == 400


@pytest.mark.parametrize("data", [b"hello world", b"GIF89a" + b"\0" * 30, b"\xff\xd8"])
def test_non_image_is_unsupported_media(data: bytes) -> None:
    with pytest.raises(DecodeError, match="neither JPEG nor PNG") as err:
        decode_frame(data, (8, 8))
    assert err.value.status == 415


def test_truncated_jpeg_is_refused() -> None:
    noisy = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    data = encode(noisy, ".jpg")
    with pytest.raises(DecodeError, match="truncated JPEG") as err:
        decode_frame(data[: len(data) // 2], (8, 8))
    assert err.value.status == 400


def test_jpeg_without_frame_header_is_refused(no_decoding: None) -> None:
    data = colour_frame("red")
    sof = data.index(b"\xff\xc0")
    with pytest.raises(DecodeError, match="no frame header"):
        decode_frame(data[: sof + 6], (8, 8))


def test_truncated_png_is_refused() -> None:
    noisy = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    data = encode(noisy)
    with pytest.raises(DecodeError, match="corrupt or truncated"):
        decode_frame(data[: len(data) // 2], (8, 8))
    with pytest.raises(DecodeError, match="no IHDR"):
        decode_frame(data[:20], (8, 8))


@pytest.mark.parametrize(("width", "height"), [(10_000, 10_000), (20_000, 100)])
def test_pixel_bomb_jpeg_refused_from_header(no_decoding: None, width: int,
                                             height: int) -> None:
    with pytest.raises(DecodeError, match="exceeds the limit") as err:
        decode_frame(with_jpeg_size(colour_frame("red"), width, height), (8, 8))
    assert err.value.status == 413


def test_pixel_bomb_png_refused_from_header(no_decoding: None) -> None:
    bomb = with_png_size(colour_frame("red", fmt=".png"), 100_000, 100_000)
    with pytest.raises(DecodeError, match="exceeds the limit") as err:
        decode_frame(bomb, (8, 8))
    assert err.value.status == 413


def test_zero_size_header_refused(no_decoding: None) -> None:
    with pytest.raises(DecodeError, match="no pixels") as err:
        decode_frame(with_jpeg_size(colour_frame("red"), 0, 48), (8, 8))
    assert err.value.status == 400


def test_caller_pixel_limit_applies() -> None:
    with pytest.raises(DecodeError, match="1000 pixels"):
        decode_frame(colour_frame("red", 64, 48), (8, 8), max_pixels=1000)


@pytest.mark.parametrize(("size", "target", "factor"), [
    ((1280, 720), (224, 224), 2),
    ((2000, 2000), (224, 224), 8),
    ((1000, 1000), (224, 224), 4),
    ((300, 300), (224, 224), 1),
    ((1280, 720), (400, 224), 1),  # target is (height, width): 720 / 2 < 400
])
def test_reduction_factor_keeps_at_least_the_model_size(size, target, factor) -> None:
    assert reduction_factor(*size, target) == factor


def test_reduced_decode_matches_model_size_and_colour() -> None:
    out = decode_frame(colour_frame("blue", 1280, 720), (224, 224))
    assert out.shape == (224, 224, 3)
    assert np.allclose(out.mean(axis=(0, 1)), [255, 0, 0], atol=3)
