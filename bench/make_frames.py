"""Make conveyor-like benchmark frames from labelled item photos.

Each frame is a belt-like background (dark rubber with texture, cleats and side rails)
with one item photo resized and placed on it, encoded as JPEG at the sizes a line camera
sends (640x480 and 1280x720 by default). The photos come from the shared data sets or any
folder of images the user gives; the frames go to the gitignored `bench/out/frames/`.

    python -m bench.make_frames                       # ../shared/datasets, 200 frames per size
    python -m bench.make_frames --source ~/photos --count 50
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from bench.common import FRAME_SIZES, FRAMES, REPO, size_name

DEFAULT_SOURCE = REPO.parent / "shared" / "datasets"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def find_photos(sources: list[Path]) -> list[Path]:
    """Every image below the source folders, in a stable order."""
    photos = sorted(p for source in sources for p in source.rglob("*")
                    if p.suffix.lower() in IMAGE_SUFFIXES)
    if not photos:
        raise SystemExit(f"no images found below {', '.join(map(str, sources))}")
    return photos


def belt_background(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Dark textured belt with lighter side rails and faint cleats across it (BGR)."""
    belt = rng.normal(58, 9, size=(height, width, 1)).clip(0, 255).astype(np.uint8)
    belt = cv2.GaussianBlur(np.repeat(belt, 3, axis=2), (5, 5), 0)
    rail = max(4, height // 16)
    belt[:rail] = belt[-rail:] = (150, 150, 145)
    spacing = max(40, width // 8)
    offset = int(rng.integers(spacing))
    for x in range(offset, width, spacing):
        cv2.line(belt, (x, rail), (x, height - rail), (72, 72, 72), max(2, width // 320))
    return belt


def place_item(belt: np.ndarray, photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Resize the photo to 45-70% of the belt height and paste it at a random spot."""
    height, width = belt.shape[:2]
    scale = rng.uniform(0.45, 0.70) * height / max(photo.shape[:2])
    item = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    ih, iw = item.shape[:2]
    y = int(rng.integers(0, height - ih + 1))
    x = int(rng.integers(0, width - iw + 1))
    frame = belt.copy()
    frame[y:y + ih, x:x + iw] = item
    return frame


def make_frames(sources: list[Path], out: Path, count: int,
                sizes: tuple[tuple[int, int], ...] = FRAME_SIZES, quality: int = 90,
                seed: int = 0) -> dict[str, Path]:
    """Write `count` frames per size to `out/<W>x<H>/`; returns the folder of each size."""
    rng = np.random.default_rng(seed)
    photos = find_photos(sources)
    chosen = rng.choice(len(photos), size=count, replace=count > len(photos))
    folders = {}
    for width, height in sizes:
        folder = out / size_name(width, height)
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.jpg"):
            old.unlink()
        for n, index in enumerate(chosen):
            photo = cv2.imread(str(photos[index]), cv2.IMREAD_COLOR)
            if photo is None:
                raise SystemExit(f"cannot read image {photos[index]}")
            frame = place_item(belt_background(width, height, rng), photo, rng)
            cv2.imwrite(str(folder / f"{n:05d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
        folders[size_name(width, height)] = folder
    return folders


def parse_size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    try:
        return int(width), int(height)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 640x480, got {text!r}") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, action="append",
                        help="folder of item photos, searched recursively "
                        f"(default {DEFAULT_SOURCE})")
    parser.add_argument("--out", type=Path, default=FRAMES)
    parser.add_argument("--count", type=int, default=200, help="frames per size")
    parser.add_argument("--size", type=parse_size, action="append",
                        help="frame size WxH, repeatable (default 640x480 and 1280x720)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    sources = args.source or [DEFAULT_SOURCE]
    for source in sources:
        if not source.is_dir():
            parser.error(f"--source {source} is not a folder")
    folders = make_frames(sources, args.out, args.count, tuple(args.size or FRAME_SIZES),
                          args.quality, args.seed)
    for name, folder in folders.items():
        print(f"{args.count} frames {name} -> {folder}")


if __name__ == "__main__":
    main()
