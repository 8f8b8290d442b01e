"""Image files -> tensors, with the protocol's transforms and errors that name the bad file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import transforms as T

from ..errors import DatasetError
from .imagenet_stats import IMAGENET_MEAN, IMAGENET_STD


def svm_transform(size: int = 224) -> tuple[T.Compose, str]:
    """The reference SVM preprocessing, scaled to ``size``: shorter side to 256/224*size, then a
    size x size resize that does not keep the aspect ratio; no crop, no flip.

    Returns the transform and a canonical description used in cache keys and result rows.
    """
    short_side = round(size * 256 / 224)
    transform = T.Compose([
        T.Resize(short_side, interpolation=T.InterpolationMode.BILINEAR),
        T.Resize((size, size), interpolation=T.InterpolationMode.BILINEAR),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    return transform, f"resize_short{short_side}-resize{size}x{size}-bilinear-imagenet_norm"


def train_transform(size: int = 224, scale: tuple[float, float] = (0.08, 1.0)) -> T.Compose:
    """Random resized crop (area 8-100 % by default, aspect 3/4-4/3) + horizontal flip, as in the
    protocol."""
    return T.Compose([
        T.RandomResizedCrop(size, scale=tuple(scale), ratio=(3 / 4, 4 / 3)),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


@dataclass(eq=False)
class DecodedImage:
    """An image a dataset ships inside a container file rather than as an image file (CIFAR's
    pickled batches): it stands where a file path stands in a split's ``image_paths``, so the
    extraction pipeline reads both alike through ``open_rgb``."""

    pixels: np.ndarray  # (height, width, 3) uint8, RGB
    origin: str  # where it was decoded from, for messages: "cifar-10-batches-py test image 17"

    def __str__(self) -> str:
        return self.origin


def open_rgb(path: "Path | DecodedImage") -> Image.Image:
    if isinstance(path, DecodedImage):
        return Image.fromarray(path.pixels)
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError as exc:
        raise DatasetError(f"image {path} does not exist") from exc
    except Image.DecompressionBombError as exc:  # a tiny file claiming billions of pixels
        raise DatasetError(f"image {path} is refused: {exc} (a decompression bomb?); replace it with a "
                           f"smaller image") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DatasetError(
            f"image {path} is corrupt or not an image ({exc}); replace or re-extract it"
        ) from exc


class ImageFileDataset(Dataset):
    """(image tensor, index) for a list of files; optional per-image targets."""

    def __init__(self, paths: Sequence[Path], transform, targets: torch.Tensor | None = None):
        self.paths = list(paths)
        self.transform = transform
        self.targets = targets

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        image = self.transform(open_rgb(self.paths[index]))
        return image, (self.targets[index] if self.targets is not None else index)
