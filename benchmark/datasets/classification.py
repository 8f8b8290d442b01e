"""Generic single-label image classification datasets: an ImageFolder tree or CSV lists (and, through
their own modules, Places205, ImageNet and the twelve transfer datasets in their official layouts).

Two on-disk layouts, detected per dataset folder:

- ImageFolder: ``root/<split>/<class>/<image>`` (jpg, jpeg, png, bmp, webp, any case). The classes
  are the sub-folders of the training split, sorted; another split may not have a class folder the
  training split lacks.
- CSV lists: ``root/<split>.csv`` with one ``path,label`` line per image (an optional header line
  ``path,label``), the path relative to ``root``, the label a class name. The classes are the
  training list's labels, sorted; a label of another list that the training list lacks is an error
  naming the file and line.

Split names are the dataset's own (``train``/``val``/``test``, ``trainval``, ...). When the
validation split is absent, it is carved out of the training split: per class, ``round(fraction x
n_c)`` images (at least one where a class has two or more), drawn with a recorded seed. The carving
is an index set on the training split, so the training split's cached features serve both parts.

Every listed path must stay inside the dataset folder: a path that leaves it (``../x.jpg``, an
absolute path elsewhere) is an error naming the list file, its line and the path, and so is an
image that is a symlink (or lies under one) pointing outside the folder, unless the dataset option
``follow_symlinks`` is true; the choice is recorded in the rows' provenance.

Only existence (and a non-zero size) of the listed files is checked at load; an image that cannot
be decoded is a DatasetError naming the file when it is read (``benchmark.datasets.images``).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from benchmark.datasets import imagenet
from benchmark.datasets.listed import inside_dataset, read_list_text
from benchmark.datasets.splits import (ClassificationData, ClassificationSplit, SplitPart, carve_validation,  # noqa: F401  (re-exported, see below)
                                       carved_parts, check_files)
from benchmark.datasets.transfer import TRANSFER_LAYOUTS, detect_transfer_layout, load_transfer
from benchmark.errors import DatasetError

# ClassificationSplit, SplitPart, ClassificationData and carve_validation live in
# benchmark.datasets.splits (shared with the transfer readers); they are imported from here as before
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# the twelve transfer datasets in their official layouts are read by benchmark.datasets.transfer
LAYOUTS = ("auto", "imagefolder", "csv", "places205", "imagenet") + TRANSFER_LAYOUTS
_SYNTH_HINT = "generate a small one with: ssl-bench data synth classification --out DIR"


def detect_layout(root: Path, train_split: str) -> str:
    if imagenet.looks_like_imagenet(root):
        return "imagenet"
    if (root / f"{train_split}.csv").is_file():
        return "csv"
    if (root / train_split).is_dir():
        return "imagefolder"
    transfer = detect_transfer_layout(root)
    if transfer:
        return transfer
    raise DatasetError(
        f"classification dataset {root}: found neither {root / train_split}/ (ImageFolder layout: "
        f"{train_split}/<class>/<image>.jpg) nor {root / (train_split + '.csv')} (CSV layout: 'path,label' lines) "
        f"nor the official files of one transfer dataset (docs/tasks/transfer.md; name it with the option layout: "
        f"{', '.join(TRANSFER_LAYOUTS)}); {_SYNTH_HINT}")


def split_exists(root: Path, split: str, layout: str) -> bool:
    if layout == "places205":
        from benchmark.datasets.places import PLACES205_SPLITS

        return split in PLACES205_SPLITS
    if layout == "imagenet":
        return imagenet.split_exists(root, split)
    return (root / f"{split}.csv").is_file() if layout == "csv" else (root / split).is_dir()


def load_split(root: Path, split: str, layout: str, class_names: list[str] | None = None, *,
               follow_symlinks: bool = False) -> ClassificationSplit:
    """Read one split; ``class_names`` (the training split's) fixes the label indices, and a label
    outside them is an error. Without it the split defines the classes (sorted). Every image must
    lie inside ``root`` (``follow_symlinks``: symlinks may point elsewhere)."""
    if layout == "places205":
        return _load_places205(root, split)
    if layout == "imagenet":
        return imagenet.load_imagenet_split(root, split, class_names, follow_symlinks, _load_folder)
    if layout == "csv":
        return _load_csv(root, split, class_names, follow_symlinks)
    return _load_folder(root, split, class_names, follow_symlinks)


def _load_places205(root: Path, split: str) -> ClassificationSplit:
    """Places205 in its official layout (``benchmark.datasets.places``): the train list and the val
    list (Places205's test set) with their integer labels and scene names."""
    from benchmark.datasets.places import find_image_dir, load_places205

    places = load_places205(root, split)
    return ClassificationSplit(find_image_dir(root), split, places.image_paths, places.labels,
                               places.class_names, str(root / split))


def _load_folder(root: Path, split: str, class_names: list[str] | None, follow_symlinks: bool) -> ClassificationSplit:
    folder = root / split
    if not folder.is_dir():
        raise DatasetError(f"split folder {folder} does not exist (ImageFolder layout: {split}/<class>/<image>.jpg); "
                           f"{_SYNTH_HINT}")
    found = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not found:
        raise DatasetError(f"split folder {folder} has no class sub-folders; expected {split}/<class>/<image>.jpg")
    if class_names is None:
        class_names = found
    else:
        unknown = [c for c in found if c not in class_names]
        if unknown:
            raise DatasetError(f"split folder {folder} has class folder(s) {unknown} that the training split lacks "
                               f"(its classes: {', '.join(class_names[:10])}{'...' if len(class_names) > 10 else ''}); "
                               f"rename or remove them")
    index = {c: i for i, c in enumerate(class_names)}
    paths, labels = [], []
    for name in found:
        images = sorted(p for p in (folder / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not images:
            raise DatasetError(f"class folder {folder / name} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                               f"add images or remove the folder")
        paths += [inside_dataset(root, p.relative_to(root).as_posix(), str(folder / name), follow_symlinks)
                  for p in images]
        labels += [index[name]] * len(images)
    check_files(paths, str(folder))
    return ClassificationSplit(root, split, paths, np.asarray(labels, dtype=np.int64), list(class_names), str(folder))


def _load_csv(root: Path, split: str, class_names: list[str] | None, follow_symlinks: bool) -> ClassificationSplit:
    list_file = root / f"{split}.csv"
    if not list_file.is_file():
        raise DatasetError(f"list file {list_file} does not exist (CSV layout: one 'path,label' line per image, "
                           f"paths relative to {root}); {_SYNTH_HINT}")
    relative, names, paths = [], [], []
    with _open_list(list_file) as handle:
        for line_no, fields in enumerate(csv.reader(handle), start=1):
            if not fields or all(not f.strip() for f in fields):
                continue
            if line_no == 1 and [f.strip().lower() for f in fields] == ["path", "label"]:
                continue
            if len(fields) != 2 or not fields[0].strip() or not fields[1].strip():
                raise DatasetError(f"{list_file}:{line_no}: expected 'path,label' (e.g. 'images/cat/001.jpg,cat'), "
                                   f"got {','.join(fields)!r}")
            relative.append(fields[0].strip())
            names.append(fields[1].strip())
            paths.append(inside_dataset(root, relative[-1], f"{list_file}:{line_no}", follow_symlinks))
    if not relative:
        raise DatasetError(f"list file {list_file} lists no images; expected one 'path,label' line per image")
    if class_names is None:
        class_names = sorted(set(names))
    index = {c: i for i, c in enumerate(class_names)}
    for position, name in enumerate(names):
        if name not in index:
            raise DatasetError(f"{list_file}: label {name!r} (data line {position + 1}: {relative[position]}) is not "
                               f"a class of the training list; its classes: "
                               f"{', '.join(class_names[:10])}{'...' if len(class_names) > 10 else ''}")
    check_files(paths, str(list_file))
    return ClassificationSplit(root, split, paths, np.asarray([index[n] for n in names], dtype=np.int64),
                               list(class_names), str(list_file))


def _open_list(list_file: Path):
    return io.StringIO(read_list_text(list_file, "'path,label' lines"), newline="")


def load_classification(data_root: str | Path, name: str, *, layout: str = "auto", train_split: str = "train",
                        val_split: str = "val", test_split: str = "test", val_fraction: float = 0.1,
                        val_seed: int = 0, follow_symlinks: bool = False,
                        multi_label: bool = False) -> ClassificationData:
    """The dataset ``data_root/name`` with its three parts. A missing ``val_split`` is carved out of
    ``train_split`` (``val_fraction``, stratified, ``val_seed``); a missing training or test split
    is an error. ``follow_symlinks``: images may be symlinks pointing outside the dataset folder.
    A transfer layout (``benchmark.datasets.transfer``) fixes its splits itself; a multi-label one
    (VOC2007) is refused unless the caller scores multi-label labels (``multi_label``)."""
    root = Path(data_root).expanduser() / name
    if not root.is_dir():
        raise DatasetError(f"classification dataset folder {root} does not exist; expected {name}/ under the data "
                           f"root {data_root} holding train/<class>/*.jpg folders or train.csv lists; {_SYNTH_HINT}")
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown layout {layout!r} for {root}; expected one of {', '.join(LAYOUTS)}")
    if layout == "auto":
        layout = detect_layout(root, train_split)
    if layout in TRANSFER_LAYOUTS:  # the protocol fixes the splits: the split options do not apply
        data = load_transfer(root, name, layout, val_fraction=val_fraction, val_seed=val_seed,
                             follow_symlinks=follow_symlinks)
        if data.protocol.get("multi_label") and not multi_label:
            # refused here, at the run's checks, rather than deep inside a single-label classifier
            raise DatasetError(f"{root} ({layout}) is multi-label (several classes per image); knn and "
                               f"linear_probe cannot score it: evaluate VOC2007 with voc07_svm, or with logreg, "
                               f"which fits one binary classifier per class (docs/tasks/transfer.md)")
        return data
    train = load_split(root, train_split, layout, follow_symlinks=follow_symlinks)
    if len(train.class_names) < 2:
        raise DatasetError(f"{train.source} has {len(train.class_names)} class; classification needs at least 2")
    if not split_exists(root, test_split, layout):
        where = root / (f"{test_split}.csv" if layout == "csv" else test_split)
        hint = "; ImageNet's test set is its official validation set: test_split: val" if layout == "imagenet" else ""
        raise DatasetError(f"test split {where} does not exist; name the test split with the task option test_split "
                           f"(splits found: {', '.join(_splits_found(root, layout)) or 'none'}){hint}")
    if val_split == test_split:  # choosing on the test set would report a selected, optimistic number
        raise DatasetError(f"{root}: the validation split and the test split are both {test_split!r}; set the task "
                           f"option val_split to a split of its own, or to one that does not exist (e.g. holdout) "
                           f"to carve the validation part out of {train_split}")
    test = load_split(root, test_split, layout, train.class_names, follow_symlinks=follow_symlinks)
    everything = np.arange(len(train.labels))
    carved = {}
    if val_split and split_exists(root, val_split, layout):
        val = load_split(root, val_split, layout, train.class_names, follow_symlinks=follow_symlinks)
        train_part = SplitPart(train, everything, train_split)
        val_part = SplitPart(val, np.arange(len(val.labels)), val_split)
    else:
        train_part, val_part, carved = carved_parts(train, val_fraction, val_seed, fix=f"add a {val_split} split")
    return ClassificationData(name, root, layout, train.class_names, train_part, val_part,
                              SplitPart(test, np.arange(len(test.labels)), test_split), carved, follow_symlinks)


def _splits_found(root: Path, layout: str) -> list[str]:
    if layout == "imagenet":
        return [s for s in imagenet.SPLITS if imagenet.split_exists(root, s)]
    if layout == "csv":
        return sorted(p.stem for p in root.glob("*.csv"))
    return sorted(p.name for p in root.iterdir() if p.is_dir())
