"""Generator of small synthetic datasets in the exact PASCAL VOC2007 devkit layout.

The real VOC07 is 900 MB and needs a download; tests, demos and smoke runs need something
that exercises the same reader and protocol in seconds.  Each of the 20 classes is drawn as
a distinct shape with a class-specific fill pattern, in a random colour on a random
gradient background, so a trained network separates the classes clearly better than a
random one while colour statistics alone carry no class information.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from benchmark.datasets.synth_shapes import CANVAS_MARGIN, Sprite, paste, pattern_colours, render_sprite
from benchmark.datasets.voc import VOC_CLASSES, VOCObject, labels_from_objects
from benchmark.errors import DatasetError

Box = tuple[int, int, int, int]  # 0-based inclusive pixel box used while drawing

_MIN_VISIBLE = 0.6  # an object must keep this fraction of its area inside the image
_MAX_OVERLAP = 0.25  # max fraction of a box covered by another, so objects stay visible
_SMALL_SCALE = (0.09, 0.14)  # canvas side / short image side for "difficult" small objects
_MAIN_SCALE = (0.45, 0.8)  # the labelled main object dominates, as in most VOC images
_NORMAL_SCALE = (0.3, 0.55)
_P_SMALL = 0.15
_P_RANDOM_DIFFICULT = 0.1
_MAX_ROTATION_DEG = 15.0
_JPEG_QUALITY = 90
_SPLITS = ("train", "val", "trainval", "test")


def synth_voc07(
    out: str | Path,
    n_images: int = 400,
    seed: int = 0,
    min_side: int = 80,
    max_side: int = 128,
    test_fraction: float = 0.5,
) -> Path:
    """Write `out/VOCdevkit/VOC2007/` and return that VOC2007 path.

    Ids are "000001"...; the first (1 - test_fraction) of them form trainval (first half
    train, second half val), the rest test.  Every class is the main object of at least
    one image in each of train, val and test that has 20 images or more.  Output is
    byte-identical for a given seed.  Existing files with the same names are overwritten.
    """
    _check_args(n_images, min_side, max_side, test_fraction)
    voc_dir = Path(out).expanduser() / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc_dir / sub).mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    splits = _split_ids(n_images, test_fraction)
    main_class = _main_classes(rng, splits)
    objects: dict[str, list[VOCObject]] = {}
    for position, image_id in enumerate(_all_ids(n_images)):
        image, image_objects = _synth_image(
            rng, min_side, max_side, main_class[image_id], force_difficult_only=position % 4 == 1
        )
        image.save(voc_dir / "JPEGImages" / f"{image_id}.jpg", quality=_JPEG_QUALITY)
        (voc_dir / "Annotations" / f"{image_id}.xml").write_text(
            _annotation_xml(image_id, image.size, image_objects)
        )
        objects[image_id] = image_objects
    _write_image_sets(voc_dir / "ImageSets" / "Main", splits, objects)
    return voc_dir


def _check_args(n_images: int, min_side: int, max_side: int, test_fraction: float) -> None:
    if n_images < 4:
        raise DatasetError(
            f"n_images is {n_images}; expected at least 4 so train, val and test are non-empty"
        )
    if not 0.0 < test_fraction < 1.0:
        raise DatasetError(
            f"test_fraction is {test_fraction}; expected a value strictly between 0 and 1"
        )
    if not 32 <= min_side <= max_side:
        raise DatasetError(
            f"image sides are {min_side}..{max_side}; expected 32 <= min_side <= max_side"
        )


def _all_ids(n_images: int) -> list[str]:
    return [f"{i:06d}" for i in range(1, n_images + 1)]


def _split_ids(n_images: int, test_fraction: float) -> dict[str, list[str]]:
    ids = _all_ids(n_images)
    n_trainval = min(max(n_images - round(n_images * test_fraction), 2), n_images - 1)
    n_train = n_trainval // 2
    return {
        "train": ids[:n_train],
        "val": ids[n_train:n_trainval],
        "trainval": ids[:n_trainval],
        "test": ids[n_trainval:],
    }


def _main_classes(rng: np.random.Generator, splits: dict[str, list[str]]) -> dict[str, int]:
    """Class of each image's first object: cycles through all classes within each split.

    Cycling (in a fresh random order per round) rather than sampling guarantees that every
    class is present in each split of 20 images or more, however small the dataset.
    """
    main: dict[str, int] = {}
    for split in ("train", "val", "test"):
        ids = splits[split]
        rounds = math.ceil(len(ids) / len(VOC_CLASSES))
        order = np.concatenate([rng.permutation(len(VOC_CLASSES)) for _ in range(rounds)])
        main.update({image_id: int(c) for image_id, c in zip(ids, order)})
    return main


# --- image synthesis


def _background(
    rng: np.random.Generator, width: int, height: int
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Smooth linear gradient between two random greyish colours plus mild noise."""
    # desaturated (grey with a tint), so the background does not drown the objects' colour
    c0, c1 = (rng.uniform(40, 220) + rng.uniform(-25, 25, 3) for _ in range(2))
    theta = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:height, 0:width]
    t = (xx * math.cos(theta) + yy * math.sin(theta)).astype(np.float32)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    image = c0 + t[..., None] * (c1 - c0) + rng.normal(0, 6, (height, width, 3))
    return image.astype(np.float32), (c0, c1)


@dataclass
class _Plan:
    cls: int
    scale: float
    difficult: bool


def _plan_objects(rng: np.random.Generator, main_class: int, force_difficult_only: bool) -> list[_Plan]:
    """1-2 objects (plus a small difficult one when forced): the main one large and not difficult, others random.

    With `force_difficult_only` the last object is small and of a class absent from the
    rest of the image, so the image gets a -1 (difficult-only) label.
    """
    plans = [_Plan(main_class, rng.uniform(*_MAIN_SCALE), difficult=False)]
    for _ in range(int(rng.integers(0, 2))):
        cls = int(rng.integers(len(VOC_CLASSES)))
        if rng.random() < _P_SMALL:
            plans.append(_Plan(cls, rng.uniform(*_SMALL_SCALE), difficult=True))
        else:
            difficult = bool(rng.random() < _P_RANDOM_DIFFICULT)
            plans.append(_Plan(cls, rng.uniform(*_NORMAL_SCALE), difficult))
    if force_difficult_only:
        used = {p.cls for p in plans}
        free = [c for c in range(len(VOC_CLASSES)) if c not in used]
        plans.append(_Plan(int(rng.choice(free)), rng.uniform(*_SMALL_SCALE), difficult=True))
    return plans


def _place(
    rng: np.random.Generator, sprite: Sprite, width: int, height: int, boxes: list[Box]
) -> tuple[int, int, Box, bool] | None:
    """Pick a top-left corner keeping most of the object visible and not hidden by others.

    Random corners may push the object past the border (truncation); the centred corner is
    tried last so an object on an empty image is always placed.
    Returns (left, top, 0-based inclusive visible box, truncated) or None if no spot fits.
    """
    side = sprite.alpha.shape[0]
    solid = sprite.alpha >= 0.5
    total = int(solid.sum())
    low = -side // 3
    corners = [
        (int(rng.integers(low, max(width - side - low, low + 1))),
         int(rng.integers(low, max(height - side - low, low + 1))))
        for _ in range(30)
    ]
    for left, top in corners + [((width - side) // 2, (height - side) // 2)]:
        visible = solid[max(0, -top) : height - top, max(0, -left) : width - left]
        if total == 0 or visible.sum() < _MIN_VISIBLE * total:
            continue
        rows, cols = np.nonzero(visible)
        x0, y0 = max(0, left) + int(cols.min()), max(0, top) + int(rows.min())
        box = (x0, y0, max(0, left) + int(cols.max()), max(0, top) + int(rows.max()))
        if all(_overlap(box, other) <= _MAX_OVERLAP for other in boxes):
            return left, top, box, bool(visible.sum() < total)
    return None


def _overlap(a: Box, b: Box) -> float:
    """Intersection area over the smaller box's area (boxes 0-based inclusive)."""
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    area = min((a[2] - a[0] + 1) * (a[3] - a[1] + 1), (b[2] - b[0] + 1) * (b[3] - b[1] + 1))
    return iw * ih / area


def _synth_image(
    rng: np.random.Generator, min_side: int, max_side: int, main_class: int, force_difficult_only: bool
) -> tuple[Image.Image, list[VOCObject]]:
    width, height = (int(v) for v in rng.integers(min_side, max_side + 1, 2))
    image, background = _background(rng, width, height)
    boxes: list[Box] = []
    objects: list[VOCObject] = []
    for plan in _plan_objects(rng, main_class, force_difficult_only):
        side = max(4, round(plan.scale * min(width, height) * CANVAS_MARGIN))
        angle = math.radians(rng.uniform(-_MAX_ROTATION_DEG, _MAX_ROTATION_DEG))
        sprite = render_sprite(plan.cls, side, angle, *pattern_colours(rng, background, plan.cls))
        placed = _place(rng, sprite, width, height, boxes)
        if placed is None:
            continue
        left, top, box, truncated = placed
        paste(image, sprite, left, top)
        boxes.append(box)
        x0, y0, x1, y1 = box
        one_based = (x0 + 1, y0 + 1, x1 + 1, y1 + 1)
        objects.append(VOCObject(VOC_CLASSES[plan.cls], one_based, plan.difficult, truncated))
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels), objects


# --- devkit files


def _annotation_xml(image_id: str, size: tuple[int, int], objects: list[VOCObject]) -> str:
    """Annotation in the VOC2007 schema, tab-indented like the original files."""
    width, height = size
    parts = [
        "<annotation>\n",
        "\t<folder>VOC2007</folder>\n",
        f"\t<filename>{image_id}.jpg</filename>\n",
        "\t<source>\n\t\t<database>ssl-bench synthetic VOC2007</database>\n",
        "\t\t<annotation>PASCAL VOC2007</annotation>\n\t\t<image>synthetic</image>\n\t</source>\n",
        f"\t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n",
        "\t\t<depth>3</depth>\n\t</size>\n",
        "\t<segmented>0</segmented>\n",
    ]
    for obj in objects:
        xmin, ymin, xmax, ymax = obj.box
        parts.append(
            f"\t<object>\n\t\t<name>{obj.name}</name>\n\t\t<pose>Unspecified</pose>\n"
            f"\t\t<truncated>{int(obj.truncated)}</truncated>\n"
            f"\t\t<difficult>{int(obj.difficult)}</difficult>\n"
            f"\t\t<bndbox>\n\t\t\t<xmin>{xmin}</xmin>\n\t\t\t<ymin>{ymin}</ymin>\n"
            f"\t\t\t<xmax>{xmax}</xmax>\n\t\t\t<ymax>{ymax}</ymax>\n\t\t</bndbox>\n\t</object>\n"
        )
    parts.append("</annotation>\n")
    return "".join(parts)


def _write_image_sets(
    main: Path, splits: dict[str, list[str]], objects: dict[str, list[VOCObject]]
) -> None:
    """Split lists plus per-class files in the devkit encoding (1 / -1 absent / 0 difficult-only)."""
    official = {1: 1, 0: -1, -1: 0}
    for split in _SPLITS:
        ids = splits[split]
        (main / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        labels = labels_from_objects([objects[i] for i in ids])
        for c, cls in enumerate(VOC_CLASSES):
            lines = (f"{i} {official[int(v)]:2d}\n" for i, v in zip(ids, labels[:, c]))
            (main / f"{cls}_{split}.txt").write_text("".join(lines))
