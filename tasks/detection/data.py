"""Detection data: VOC splits as image sizes and ground-truth boxes; images at the test scale."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from benchmark.datasets.images import IMAGENET_MEAN, IMAGENET_STD, open_rgb
from benchmark.datasets.voc import VOC_CLASSES, VOCSplit
from benchmark.errors import DatasetError
from .evaluate import GroundTruth

_CLASS_LABEL = {name: i + 1 for i, name in enumerate(VOC_CLASSES)}  # 0 is background


@dataclass
class DetectionData:
    """Images of one or more VOC splits with their ground truth (continuous 0-based boxes)."""

    ids: list[str]
    paths: list[Path]
    sizes: list[tuple[int, int]]  # (width, height)
    ground_truth: list[GroundTruth]
    fingerprints: list[str]

    @classmethod
    def from_voc(cls, splits: list[VOCSplit]) -> "DetectionData":
        ids, paths, sizes, gts, prints = [], [], [], [], []
        for split in splits:
            prints.append(f"VOC{split.year}/{split.split}:{split.fingerprint()}")
            for image_id, path, objects in zip(split.image_ids, split.image_paths, split.objects):
                ids.append(image_id)
                paths.append(path)
                sizes.append(_image_size(path))
                boxes = np.array([[o.box[0] - 1, o.box[1] - 1, o.box[2], o.box[3]] for o in objects],
                                 dtype=np.float32).reshape(-1, 4)
                gts.append(GroundTruth(boxes, np.array([_CLASS_LABEL[o.name] for o in objects], dtype=np.int64),
                                       np.array([o.difficult for o in objects], dtype=bool)))
        if len(set(ids)) != len(ids):
            raise DatasetError("detection: the training splits share image ids; VOC2007 and VOC2012 ids must differ")
        return cls(ids, paths, sizes, gts, prints)

    def __len__(self) -> int:
        return len(self.ids)

    def fingerprint(self) -> str:
        return hashlib.sha256("\n".join(self.fingerprints).encode()).hexdigest()[:16]


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:  # reads the header only
            return image.size
    except OSError as exc:
        raise DatasetError(f"image {path} is corrupt or not an image ({exc}); replace or re-extract it") from exc


def scale_factor(width: int, height: int, scale: int, max_size: int) -> float:
    """Detectron's single-scale rule: shorter side to ``scale`` unless the longer would exceed
    ``max_size``."""
    factor = scale / min(width, height)
    if round(factor * max(width, height)) > max_size:
        factor = max_size / max(width, height)
    return factor


def load_image(path: Path, scale: int, max_size: int, flip: bool,
               size_multiple: int = 1) -> tuple[torch.Tensor, np.ndarray]:
    """(3, h, w) normalised tensor at the detection scale, and the factors (x, y, x, y) applied to
    boxes. ``size_multiple`` > 1 rounds both sides to a multiple of it (aspect changes slightly):
    few distinct shapes, which CPU convolution libraries run much faster than many."""
    image = open_rgb(path)
    factor = scale_factor(*image.size, scale, max_size)
    width, height = image.size
    size = (max(1, round(height * factor)), max(1, round(width * factor)))
    factors = np.full(4, factor, dtype=np.float32)
    if size_multiple > 1:
        size = tuple(max(size_multiple, round(side / size_multiple) * size_multiple) for side in size)
        factors = np.array([size[1] / width, size[0] / height] * 2, dtype=np.float32)
    image = image.resize((size[1], size[0]), Image.BILINEAR)
    tensor = TF.normalize(TF.to_tensor(image), IMAGENET_MEAN, IMAGENET_STD)
    if flip:
        tensor = tensor.flip(-1)
    return tensor, factors


def transform_boxes(boxes: np.ndarray, factor, width: float, flip: bool) -> np.ndarray:
    """Continuous boxes of the original image -> the scaled (and flipped) image; ``width`` is the
    scaled image width."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * factor
    if flip:
        boxes = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)
    return boxes
