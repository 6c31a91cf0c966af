"""Review frames: which decisions keep a picture, and where the pictures live.

`FrameSampler.reason` runs on the request path, so it only counts (no decoding); the
writer thread later calls `FrameStore.save`, which downscales and JPEG-encodes the frame
and stores it content-addressed (`ab/cd/<sha256>.jpg`): identical frames share a file,
and a hash is the only name a client can ask for, so no path can escape the folder.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import cv2

from scrapvision.audit.settings import FrameSampling
from scrapvision.decode import DecodeError, check_dimensions, decode_frame, header_size
from scrapvision.records import DecisionRecord

FRAME_HASH = re.compile(r"^[0-9a-f]{64}$")

LOW_MARGIN = "low_margin"
RECIRCULATED = "recirculated"
CLASS_SAMPLE = "class_sample"
RANDOM = "random"
FrameReason = Literal["low_margin", "recirculated", "class_sample", "random"]


class FrameSampler:
    """Decides per decision whether its frame is worth a human look, within per-minute caps.

    Priority: low margin, recirculated, the first frames of each class this minute, then a
    random share. Minutes are taken from the decision time, per line.
    """

    def __init__(self, settings: FrameSampling, rng: random.Random | None = None) -> None:
        self.settings = settings
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._minute: dict[str, int] = {}
        self._kept: Counter[str] = Counter()  # line -> frames kept this minute
        self._per_class: Counter[tuple[str, str]] = Counter()  # (line, class) -> kept
        self.skipped_by_cap = 0

    def reason(self, record: DecisionRecord) -> FrameReason | None:
        """Why this decision's frame should be kept, or None; counts it against the caps."""
        settings = self.settings
        if not settings.enabled:
            return None
        reason = self._candidate(record)
        if reason is None:
            return None
        with self._lock:
            self._roll_minute(record.line, int(record.time // 60))
            if self._kept[record.line] >= settings.max_per_minute:
                self.skipped_by_cap += 1
                return None
            if reason == CLASS_SAMPLE:
                key = (record.line, record.class_name or "")
                if self._per_class[key] >= settings.per_class_per_minute:
                    reason = RANDOM if self._rng.random() < settings.random_rate else None
                    if reason is None:
                        return None
                else:
                    self._per_class[key] += 1
            self._kept[record.line] += 1
        return reason

    def _candidate(self, record: DecisionRecord) -> FrameReason | None:
        settings = self.settings
        if record.class_name is None:  # late or overload: no inference, nothing to judge
            return None
        if record.margin is not None and record.margin < settings.margin_threshold:
            return LOW_MARGIN
        if record.action == "recirculate" and settings.keep_recirculated:
            return RECIRCULATED
        return CLASS_SAMPLE

    def _roll_minute(self, line: str, minute: int) -> None:
        if self._minute.get(line, minute - 1) >= minute:  # a late record counts as this minute
            return
        self._minute[line] = minute
        self._kept[line] = 0
        for key in [key for key in self._per_class if key[0] == line]:
            del self._per_class[key]


class FrameStore:
    """Downscaled JPEG copies of frames, addressed by the sha256 of the stored bytes."""

    def __init__(self, root: Path, longest_side: int = 320, jpeg_quality: int = 85) -> None:
        self.root = Path(root)
        self.longest_side = longest_side
        self.jpeg_quality = jpeg_quality

    def path(self, frame_hash: str) -> Path:
        """Where the frame with this hash lives; ValueError unless it is a sha256 hex digest."""
        if not FRAME_HASH.match(frame_hash):
            raise ValueError("a frame hash is 64 lowercase hex digits")
        return self.root / frame_hash[:2] / frame_hash[2:4] / f"{frame_hash}.jpg"

    def save(self, frame: bytes) -> str:
        """Downscale, encode and store `frame`; returns its hash. Raises DecodeError."""
        data = self.encode(frame)
        frame_hash = hashlib.sha256(data).hexdigest()
        path = self.path(frame_hash)
        if path.exists():
            os.utime(path)  # used again: the orphan sweep's grace period starts anew
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            try:
                temporary.write_bytes(data)
                os.replace(temporary, path)  # atomic: a reader never sees half a file
            except OSError:  # disk full, read-only: leave no partial file behind
                temporary.unlink(missing_ok=True)
                raise
        return frame_hash

    def unused_since(self, cutoff: float) -> Iterator[tuple[str, Path]]:
        """(hash, path) of every stored frame last written or reused before `cutoff`."""
        for path in self.root.glob("??/??/*.jpg"):
            try:
                written = path.stat().st_mtime
            except FileNotFoundError:  # deleted meanwhile by another process's prune
                continue
            if written < cutoff and FRAME_HASH.match(path.stem):
                yield path.stem, path

    def encode(self, frame: bytes) -> bytes:
        """JPEG bytes of `frame` with its longest side at most `longest_side` pixels.

        Decoded by the serving path's own `decode_frame` (header checks, reduced-size
        JPEG decoding, area resize), keeping the aspect ratio.
        """
        width, height = header_size(frame)
        check_dimensions(width, height)
        scale = min(1.0, self.longest_side / max(width, height))
        target = (max(1, round(height * scale)), max(1, round(width * scale)))
        image = decode_frame(frame, target, "BGR")
        ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise DecodeError("frame could not be encoded as JPEG")
        return buffer.tobytes()
