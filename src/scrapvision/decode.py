"""Frame decoding and resizing: the one preprocessing step outside the model graph.

Training and serving both call `decode_frame`, so the pixels a model was trained on are
the pixels it is served. Dimensions are read from the file header *before* decoding, so a
pixel bomb is refused without allocating its pixels.

JPEGs are decoded by libjpeg-turbo through simplejpeg in strict mode: libjpeg *warns* (and
OpenCV goes on) when a scan is cut short and padded with grey, so only a decoder that turns
warnings into errors refuses such a frame instead of classifying made-up pixels. Its output
is pixel-identical to `cv2.imdecode` at the same scale (checked on both data sets), so
models trained before the switch see the same pixels. PNGs go through OpenCV (libpng already
fails on missing image data).
"""

from __future__ import annotations

import struct

import cv2
import numpy as np
import simplejpeg

MAX_PIXELS = 40_000_000  # 40 MP: far above any line camera, far below a bomb
MAX_SIDE = 16_384
# Each scan of a progressive JPEG is one more pass over the whole image, so a small file
# with thousands of scans costs seconds of CPU; encoders write about 10.
MAX_JPEG_SCANS = 100
COLOUR_ORDERS = ("BGR", "RGB")

_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class DecodeError(ValueError):
    """The bytes are not a frame we accept; `status` is the HTTP status that fits."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def image_format(data: bytes) -> str:
    """'jpeg' or 'png' from the magic bytes; DecodeError(415) for anything else."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    raise DecodeError("frame is neither JPEG nor PNG (checked the magic bytes)", status=415)


def header_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the JPEG SOF or PNG IHDR header, without decoding pixels."""
    if image_format(data) == "png":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise DecodeError("truncated PNG: no IHDR header")
        return struct.unpack(">II", data[16:24])
    return _jpeg_size(data)


def _jpeg_size(data: bytes) -> tuple[int, int]:
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            raise DecodeError("corrupt JPEG: bad marker before the frame header")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _JPEG_SOF:
            if pos + 9 > end:
                break
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        pos += 2 + length
    raise DecodeError("truncated JPEG: no frame header found")


def check_dimensions(width: int, height: int, max_pixels: int = MAX_PIXELS) -> None:
    if width <= 0 or height <= 0:
        raise DecodeError(f"image has no pixels ({width}x{height})")
    if width > MAX_SIDE or height > MAX_SIDE or width * height > max_pixels:
        raise DecodeError(
            f"image {width}x{height} exceeds the limit of {max_pixels} pixels "
            f"/ {MAX_SIDE} per side", status=413,
        )


def reduction_factor(width: int, height: int, target: tuple[int, int]) -> int:
    """Largest libjpeg scale-down (8, 4, 2 or 1) that still leaves at least the model input size.

    Decoding a 1280x720 JPEG at 1/2 scale is ~3x cheaper than full size and loses nothing
    once the result is resized to 224x224 anyway.
    """
    target_h, target_w = target
    for factor in (8, 4, 2):
        if width // factor >= target_w and height // factor >= target_h:
            return factor
    return 1


def _decode_jpeg(data: bytes, width: int, height: int, factor: int) -> np.ndarray:
    """BGR pixels at exactly 1/`factor` scale (as cv2's IMREAD_REDUCED_*); DecodeError on
    any libjpeg warning. Bytes after the end-of-image marker are ignored, as libjpeg does."""
    scans = data.count(b"\xff\xda")  # SOS markers: entropy-coded data never holds 0xFFDA
    if scans > MAX_JPEG_SCANS:
        raise DecodeError(f"JPEG has {scans} scans, more than the limit of {MAX_JPEG_SCANS}",
                          status=413)
    try:
        return simplejpeg.decode_jpeg(
            data, "BGR", min_factor=factor, strict=True,
            min_height=-(-height // factor), min_width=-(-width // factor),
        )
    except ValueError as exc:  # simplejpeg reports every libjpeg error and warning this way
        raise DecodeError(f"corrupt or truncated JPEG: {exc}") from exc


def decode_frame(
    data: bytes | bytearray | memoryview,
    size: tuple[int, int],
    colour_order: str = "BGR",
    max_pixels: int = MAX_PIXELS,
    dimensions: tuple[int, int] | None = None,
) -> np.ndarray:
    """Decode JPEG/PNG bytes to a uint8 (H, W, 3) array of `size` = (height, width).

    The whole frame is resized (no crop), with area interpolation, to the model input.
    `dimensions`: the frame's (width, height) when the caller has already read them with
    `header_size` (the service does, to refuse a frame before queueing it). Raises
    DecodeError with a message fit for the client.
    """
    if colour_order not in COLOUR_ORDERS:  # a model/config fault, not the client's
        raise ValueError(f"colour order must be one of {COLOUR_ORDERS}, got {colour_order!r}")
    data = bytes(data) if not isinstance(data, bytes) else data
    if not data:
        raise DecodeError("empty frame body")
    width, height = dimensions or header_size(data)
    check_dimensions(width, height, max_pixels)
    if image_format(data) == "jpeg":
        image = _decode_jpeg(data, width, height, reduction_factor(width, height, size))
    else:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise DecodeError("image data is corrupt or truncated and could not be decoded")
    target_h, target_w = size
    if image.shape[:2] != (target_h, target_w):
        image = cv2.resize(image, (target_w, target_h), interpolation=cv2.INTER_AREA)
    if colour_order == "RGB":
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image
