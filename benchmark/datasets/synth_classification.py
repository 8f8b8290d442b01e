"""Generator of small single-label classification datasets (ImageFolder tree or CSV lists).

Class c is one of the 20 shapes of ``synth_shapes`` with its fill pattern and colours around its
hue (the VOC generator's objects); classes beyond 20 reuse the shapes with a second hue. Each image
is one object at a random position, scale and rotation on a greyish background with a random
stripe texture and noise, so the class is learnable from the object while background statistics
say nothing about it. Output is byte-identical for a given seed.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from benchmark.datasets.synth_shapes import CANVAS_MARGIN, SHAPES, paste, pattern_colours, render_sprite
from benchmark.errors import DatasetError

_JPEG_QUALITY = 90
_NOISE_STD = 6.0
MAX_CLASSES = 2 * len(SHAPES)


def class_name(cls: int) -> str:
    return f"class_{cls:02d}"


def class_image(rng: np.random.Generator, cls: int, min_side: int, max_side: int) -> Image.Image:
    """One image of class ``cls``: its object on a textured background (the other generators reuse it)."""
    width, height = (int(v) for v in rng.integers(min_side, max_side + 1, 2))
    short = min(width, height)
    base = rng.uniform(60, 200) + rng.uniform(-25, 25, 3)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, math.pi)
    period = rng.uniform(0.15, 0.5) * short
    stripes = ((xx * math.cos(angle) + yy * math.sin(angle)) / period + rng.uniform()) % 1.0 < 0.5
    image = np.broadcast_to(base, (height, width, 3)).astype(np.float32)
    image = np.where(stripes[..., None], image * rng.uniform(0.75, 0.95), image)
    side = max(8, round(rng.uniform(0.45, 0.8) * short * CANVAS_MARGIN))
    # classes 20..39: the same shapes in the hue of another class index, so they stay separable
    hue_class = cls if cls < len(SHAPES) else cls + 7
    colour, shade = pattern_colours(rng, (base.astype(np.float32),), hue_class)
    sprite = render_sprite(cls % len(SHAPES), side, math.radians(rng.uniform(-25, 25)), colour, shade)
    left = int(rng.integers(-side // 6, max(width - 5 * side // 6, -side // 6 + 1)))
    top = int(rng.integers(-side // 6, max(height - 5 * side // 6, -side // 6 + 1)))
    paste(image, sprite, left, top)
    image = image + rng.normal(0, _NOISE_STD, image.shape)
    return Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8))


def synth_classification(out: str | Path, *, name: str = "synth-classification", num_classes: int = 10,
                         per_split: dict[str, int] | None = None, layout: str = "imagefolder", seed: int = 0,
                         min_side: int = 64, max_side: int = 96) -> Path:
    """Write ``out/name`` and return it. ``per_split``: images per class of each split (default
    ``{"train": 30, "test": 10}``: no validation split, so tasks carve one out of train).
    ``layout``: ``imagefolder`` (``split/class/NNNNN.jpg``) or ``csv`` (``images/split/class/NNNNN.jpg``
    and ``split.csv`` lists of ``path,label``)."""
    per_split = dict(per_split or {"train": 30, "test": 10})
    if not 2 <= num_classes <= MAX_CLASSES:
        raise DatasetError(f"num_classes is {num_classes}; expected 2..{MAX_CLASSES}")
    if layout not in ("imagefolder", "csv"):
        raise DatasetError(f"layout is {layout!r}; expected 'imagefolder' or 'csv'")
    if any(n < 1 for n in per_split.values()) or not per_split:
        raise DatasetError(f"images per class of each split must be >= 1, got {per_split}")
    if not 32 <= min_side <= max_side:
        raise DatasetError(f"image sides are {min_side}..{max_side}; expected 32 <= min_side <= max_side")
    root = Path(out).expanduser() / name
    rng = np.random.default_rng(seed)
    for split, count in per_split.items():
        lines = ["path,label\n"]
        for cls in range(num_classes):
            folder = (root / "images" / split if layout == "csv" else root / split) / class_name(cls)
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                path = folder / f"{index:05d}.jpg"
                class_image(rng, cls, min_side, max_side).save(path, quality=_JPEG_QUALITY)
                lines.append(f"{path.relative_to(root).as_posix()},{class_name(cls)}\n")
        if layout == "csv":
            (root / f"{split}.csv").write_text("".join(lines))
    return root
