"""ImageNet-1k (ILSVRC2012) in the layouts it is downloaded in, as a classification layout (``imagenet``).

- The class-folder layout: ``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG`` (what
  torchvision's ``ImageNet`` and most preparation scripts leave).
- Kaggle's ILSVRC object-localization download: ``root/ILSVRC/Data/CLS-LOC/train/<wnid>/*.JPEG``,
  the 50,000 validation images side by side in ``root/ILSVRC/Data/CLS-LOC/val/``, and their labels in
  ``root/LOC_val_solution.csv`` (``ImageId,PredictionString``; the string lists the image's boxes as
  ``<wnid> x_min y_min x_max y_max`` groups, all of the image's one class). The flat ``val/`` folder
  with ``LOC_val_solution.csv`` beside ``train/`` works too.

The classes are the training folders' WordNet ids, sorted: the usual class indices 0..999. The
protocol's test set is the official validation set (``test_split: val``); a validation part for
choosing hyper-parameters is carved out of train (``val_split: holdout``), as for Places205. A
listed validation image that is missing, an image of ``val/`` that the solution file does not
list, and a label that is not a training class are errors naming the file.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmark.datasets.listed import inside_dataset, read_list_text
from benchmark.datasets.splits import ClassificationSplit, check_files
from benchmark.errors import DatasetError

KAGGLE_IMAGES = Path("ILSVRC", "Data", "CLS-LOC")
SOLUTION_FILE = "LOC_val_solution.csv"
IMAGE_SUFFIX = ".jpeg"  # ImageNet's files end in .JPEG
SPLITS = ("train", "val")


def image_root(root: Path) -> Path:
    """The folder holding ``train/`` and ``val/``: Kaggle's ``ILSVRC/Data/CLS-LOC`` or ``root`` itself."""
    kaggle = root / KAGGLE_IMAGES
    return kaggle if kaggle.is_dir() else root


def looks_like_imagenet(root: Path) -> bool:
    """Kaggle's tree, or ``train/`` beside ``LOC_val_solution.csv`` (the class-folder layout is ImageFolder's)."""
    return (root / KAGGLE_IMAGES / "train").is_dir() or ((root / "train").is_dir() and (root / SOLUTION_FILE).is_file())


def split_exists(root: Path, split: str) -> bool:
    return split in SPLITS and (image_root(root) / split).is_dir()


def load_imagenet_split(root: Path, split: str, class_names: list[str] | None, follow_symlinks: bool,
                        load_folder: Callable[..., ClassificationSplit]) -> ClassificationSplit:
    """``train`` or ``val`` of ImageNet under ``root``; ``class_names`` (train's wnids) fix the labels.
    ``load_folder(images_root, split, class_names, follow_symlinks)`` reads a class-folder split (the
    ImageFolder reader of ``benchmark.datasets.classification``)."""
    if split not in SPLITS:
        raise DatasetError(f"ImageNet ({root}) has the splits {', '.join(SPLITS)}, not {split!r}; its test set is "
                           f"the official validation set (test_split: val; val_split: holdout carves a validation "
                           f"part out of train)")
    images = image_root(root)
    folder = images / split
    if not folder.is_dir():
        raise DatasetError(f"ImageNet split folder {folder} does not exist; expected {split}/<wnid>/*.JPEG"
                           + (f" or {split}/*.JPEG with {root / SOLUTION_FILE}" if split == "val" else ""))
    if split == "train" or any(p.is_dir() for p in folder.iterdir()):
        loaded = load_folder(images, split, class_names, follow_symlinks)
        return ClassificationSplit(root, split, loaded.image_paths, loaded.labels, loaded.class_names,
                                   loaded.source)
    return _flat_val(root, folder, class_names, follow_symlinks)


def _flat_val(root: Path, folder: Path, class_names: list[str] | None, follow_symlinks: bool) -> ClassificationSplit:
    solution = next((p for p in (root / SOLUTION_FILE, image_root(root) / SOLUTION_FILE) if p.is_file()), None)
    if solution is None:
        raise DatasetError(f"ImageNet validation images in {folder} lie side by side, but their labels file "
                           f"{root / SOLUTION_FILE} does not exist; it comes with the images (Kaggle's download), "
                           f"or sort the images into val/<wnid>/ folders")
    if class_names is None:
        raise DatasetError("ImageNet's validation labels are read against the training classes; load train first")
    index = {name: i for i, name in enumerate(class_names)}
    labels_of: dict[str, str] = {}
    text = read_list_text(solution, "'ImageId,PredictionString' lines")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
        raise DatasetError(f"{solution}: expected the header 'ImageId,PredictionString', got {header!r}")
    for line_no, fields in enumerate(reader, start=2):
        if not fields:
            continue
        if len(fields) != 2 or not fields[0].strip() or not fields[1].split():
            raise DatasetError(f"{solution}:{line_no}: expected 'ImageId,<wnid> x_min y_min x_max y_max ...', "
                               f"got {','.join(fields)!r}")
        image_id, wnid = fields[0].strip(), fields[1].split()[0]
        if wnid not in index:
            raise DatasetError(f"{solution}:{line_no}: {image_id} is labelled {wnid!r}, which is not a class "
                               f"folder of train/")
        labels_of[image_id] = wnid
    on_disk = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == IMAGE_SUFFIX)
    unlisted = [p.name for p in on_disk if p.stem not in labels_of]
    if unlisted:
        raise DatasetError(f"{len(unlisted)} image(s) of {folder} are not listed in {solution}: "
                           f"{', '.join(unlisted[:5])}; the file and the images come from different downloads")
    ids = sorted(labels_of)
    found = {p.stem: p for p in on_disk}
    paths = [inside_dataset(root, found.get(i, folder / f"{i}.JPEG").relative_to(root).as_posix(), str(solution),
                            follow_symlinks) for i in ids]
    check_files(paths, str(solution))
    labels = np.asarray([index[labels_of[i]] for i in ids], dtype=np.int64)
    return ClassificationSplit(root, "val", paths, labels, list(class_names), str(solution))
