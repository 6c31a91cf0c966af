"""Training tensors from samples: decoded once with the serving decode, augmented per step.

Every image goes through `scrapvision.decode.decode_frame` at the model input size, exactly
as a served frame does, and is kept in RAM (the sets are small), so an epoch costs no JPEG
decoding. Augmentation then works on those served-size pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2
from tqdm import tqdm

from scrapvision.datasets import DatasetError, Sample
from scrapvision.decode import DecodeError, decode_frame
from scrapvision.training.config import AugmentConfig

# The exported graph does the same scaling (mean = std = 0.5 of the 0..255 range).
MEAN = 0.5
STD = 0.5


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) RGB -> float in [-1, 1], the backbone's input."""
    return (images.float() / 255.0 - MEAN) / STD


def decode_all(samples: Sequence[Sample], size: int, *, progress: bool = True) -> torch.Tensor:
    """uint8 (N, 3, size, size) RGB tensor of every sample, via the serving decode."""
    out = torch.empty((len(samples), 3, size, size), dtype=torch.uint8)
    for i, sample in enumerate(tqdm(samples, desc="decode", disable=not progress, leave=False)):
        image = decode_sample(sample, size, "RGB")
        out[i] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    return out


def decode_sample(sample: Sample, size: int, colour_order: str) -> np.ndarray:
    """One sample as the service decodes it; the error names the file, since a split.csv
    may list thousands and the decoder's message alone does not say which one is bad."""
    try:
        return decode_frame(sample.path.read_bytes(), (size, size), colour_order=colour_order)
    except (OSError, DecodeError) as exc:
        raise DatasetError(f"cannot read {sample.path}: {exc}") from exc


def build_augmentation(config: AugmentConfig, size: int) -> v2.Transform:
    """Random view of an item on a belt: position/scale, mirror, orientation, light, focus."""
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(config.scale_min, 1.0), antialias=True),
        v2.RandomHorizontalFlip(config.hflip),
        v2.RandomVerticalFlip(config.vflip),
        v2.RandomRotation(config.rotation),
        v2.ColorJitter(config.brightness, config.contrast, config.saturation, config.hue),
        v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.5))], p=config.blur),
    ])


class CachedImages(Dataset):
    """Decoded images + class indices, optionally augmented on access."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor,
                 transform: v2.Transform | None = None) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index]


def label_tensor(samples: Sequence[Sample], classes: Sequence[str]) -> torch.Tensor:
    index = {name: i for i, name in enumerate(classes)}
    return torch.tensor([index[s.label] for s in samples], dtype=torch.long)
