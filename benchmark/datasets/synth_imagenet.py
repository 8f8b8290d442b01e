"""A small ImageNet in the layouts ``benchmark.datasets.imagenet`` reads, drawn by
``synth_classification.class_image`` (a class's shape on a textured background).

``kaggle`` (default): Kaggle's ILSVRC download, ``imagenet/ILSVRC/Data/CLS-LOC/train/<wnid>/<wnid>_<n>.JPEG``,
the validation images side by side in ``.../val/ILSVRC2012_val_<8 digits>.JPEG`` (in shuffled class
order, as the real ones) and ``imagenet/LOC_val_solution.csv`` with a box per image, plus
``LOC_synset_mapping.txt``. ``folders``: ``imagenet/train/<wnid>/`` and ``imagenet/val/<wnid>/``.
Output is byte-identical for a given seed and size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmark.datasets.imagenet import KAGGLE_IMAGES, SOLUTION_FILE
from benchmark.datasets.synth_classification import class_image
from benchmark.errors import DatasetError

_JPEG_QUALITY = 90
_SIDES = (48, 72)
LAYOUTS = ("kaggle", "folders")
# ImageNet's first ten classes (wnid, name); further classes get made-up ids of the same form
_SYNSETS = [("n01440764", "tench, Tinca tinca"), ("n01443537", "goldfish, Carassius auratus"),
            ("n01484850", "great white shark"), ("n01491361", "tiger shark, Galeocerdo cuvieri"),
            ("n01494475", "hammerhead, hammerhead shark"), ("n01496331", "electric ray, crampfish"),
            ("n01498041", "stingray"), ("n01514668", "cock"), ("n01514859", "hen"),
            ("n01518878", "ostrich, Struthio camelus")]


def synset(cls: int) -> tuple[str, str]:
    return _SYNSETS[cls] if cls < len(_SYNSETS) else (f"n{99000000 + cls:08d}", f"generated class {cls}")


def synth_imagenet(out: str | Path, *, num_classes: int = 4, train_per_class: int = 20, val_per_class: int = 5,
                   layout: str = "kaggle", seed: int = 0) -> Path:
    """Write ``out/imagenet`` and return it."""
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown ImageNet layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if num_classes < 2 or train_per_class < 1 or val_per_class < 1:
        raise DatasetError("a generated ImageNet needs at least 2 classes and 1 train and 1 val image per class")
    root = Path(out).expanduser() / "imagenet"
    images = root / KAGGLE_IMAGES if layout == "kaggle" else root
    rng = np.random.default_rng([seed, 1000])

    def save(cls: int, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        class_image(rng, cls, *_SIDES).save(path, format="JPEG", quality=_JPEG_QUALITY)

    for cls in range(num_classes):
        wnid = synset(cls)[0]
        for n in range(train_per_class):
            save(cls, images / "train" / wnid / f"{wnid}_{n + 1}.JPEG")
    val_classes = rng.permutation(np.repeat(np.arange(num_classes), val_per_class))
    solution = ["ImageId,PredictionString"]
    for number, cls in enumerate(val_classes.tolist(), start=1):
        wnid, image_id = synset(cls)[0], f"ILSVRC2012_val_{number:08d}"
        if layout == "folders":
            save(cls, images / "val" / wnid / f"{image_id}.JPEG")
            continue
        save(cls, images / "val" / f"{image_id}.JPEG")
        box = sorted(int(v) for v in rng.integers(0, 48, 2)) + sorted(int(v) for v in rng.integers(0, 48, 2))
        solution.append(f"{image_id},{wnid} {box[0]} {box[2]} {box[1]} {box[3]} ")
    if layout == "kaggle":
        (root / SOLUTION_FILE).write_text("\n".join(solution) + "\n")
        (root / "LOC_synset_mapping.txt").write_text(
            "".join(f"{wnid} {name}\n" for wnid, name in map(synset, range(num_classes))))
    return root
