"""Reader for Places205 in the official layout (images folder + trainvalsplit_places205 lists).

The Places205 linear-classification and low-shot tasks of Goyal et al. 2019 train on the
official train list (2.45M images) and evaluate on the val list (20,500 images, 100 per
class).  Each list line is ``relative/path.jpg label`` with the path relative to the images
folder and the label an int in 0..204.  This module reads those lists and checks that the
listed files exist, without opening any image (decoding is done lazily by the consumer).
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from benchmark.datasets.listed import inside_dataset, read_list_text
from benchmark.errors import DatasetError

PLACES205_NUM_CLASSES = 205
PLACES205_SPLITS: tuple[str, ...] = ("train", "val")
LIST_DIR = "trainvalsplit_places205"
# the images folder: ours/synthetic layout first, then the path inside the original tarball
IMAGE_DIRS: tuple[str, ...] = ("images", "data/vision/torralba/deeplearning/images256")

_SYNTH_HINT = "generate a small one with: ssl-bench data synth places205 --out DIR"
_LINE_FORMAT = "'<relative/path.jpg> <label>' (e.g. 'a/abbey/00000001.jpg 0')"


@dataclass
class PlacesSplit:
    """One split of Places205: image `i` at `image_paths[i]` has class `labels[i]`.

    `num_classes` is max label + 1 over both official lists, so train and val agree;
    `class_names[c]` comes from the folders of the listed paths (`class{c}` if unknown).
    """

    root: Path
    split: str
    image_paths: list[Path]
    labels: np.ndarray
    num_classes: int
    class_names: list[str]

    def fingerprint(self) -> str:
        """Cheap cache key: changes when the split's paths or any image file size change."""
        digest = hashlib.sha256(f"{self.split}\n".encode())
        for path in self.image_paths:
            relative = path.relative_to(self.root).as_posix()
            digest.update(f"{relative}\t{path.stat().st_size}\n".encode())
        return digest.hexdigest()

    def class_counts(self) -> np.ndarray:
        """Number of images of each class, shape (num_classes,), int64."""
        return np.bincount(self.labels, minlength=self.num_classes).astype(np.int64)


def load_places205(root: str | Path, split: str) -> PlacesSplit:
    """Load split "train" or "val" of Places205 from `root`.

    `root` holds the images folder (`images/` or, as extracted from the original tarball,
    `data/vision/torralba/deeplearning/images256/`) and the list files, either in
    `trainvalsplit_places205/` or directly in `root`.  Both lists must be present: the other
    split's labels are read too so that `num_classes` is the same for train and val.
    """
    if split not in PLACES205_SPLITS:
        raise DatasetError(
            f"unknown Places205 split {split!r}; expected one of: {', '.join(PLACES205_SPLITS)}"
        )
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"Places205 dataset folder {root} does not exist. {_expected_layout()}")
    list_files = {s: find_list_file(root, s) for s in PLACES205_SPLITS}
    entries = {s: _read_list(list_files[s]) for s in PLACES205_SPLITS}
    relative, labels = entries[split]
    all_labels = np.concatenate([entries[s][1] for s in PLACES205_SPLITS])
    num_classes = int(all_labels.max()) + 1
    # train paths first: they always carry the class folders, whatever val looks like
    all_paths = [p for s in PLACES205_SPLITS for p in entries[s][0]]
    return PlacesSplit(
        root=root,
        split=split,
        image_paths=_image_paths(find_image_dir(root), relative, list_files[split]),
        labels=labels,
        num_classes=num_classes,
        class_names=class_names_from_paths(all_paths, all_labels, num_classes),
    )


def find_list_file(root: Path, split: str) -> Path:
    """`root/trainvalsplit_places205/{split}_places205.csv`, else `root/{split}_places205.csv`."""
    name = f"{split}_places205.csv"
    candidates = (root / LIST_DIR / name, root / name)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DatasetError(
        f"Places205 list file {name} not found: looked for {candidates[0]} and {candidates[1]}. "
        f"Expected lines {_LINE_FORMAT}; {_SYNTH_HINT}"
    )


def find_image_dir(root: Path) -> Path:
    """The folder the list paths are relative to: `root/images` or the tarball's images256."""
    candidates = [root / d for d in IMAGE_DIRS]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise DatasetError(
        f"Places205 images folder not found in {root}: looked for "
        f"{' and '.join(str(c) for c in candidates)}. {_expected_layout()}"
    )


def class_names_from_paths(paths: list[str], labels: np.ndarray, num_classes: int) -> list[str]:
    """Scene name of each class, from the first listed path of that class that has one.

    `a/abbey/x.jpg` -> `abbey`; `s/subway_station/platform/x.jpg` -> `subway_station_platform`
    (the one-letter index folder is dropped, nested scene folders joined by `_`); a path
    without folders gives no name, and a class without a named path is called `class{c}`.
    """
    names: list[str | None] = [None] * num_classes
    missing = num_classes
    for path, label in zip(paths, labels.tolist()):
        if names[label] is None:
            name = _scene_name(path)
            if name:
                names[label] = name
                missing -= 1
                if not missing:
                    break
    return [name or f"class{c}" for c, name in enumerate(names)]


def _scene_name(relative: str) -> str:
    folders = PurePosixPath(relative).parts[:-1]
    if len(folders) > 1 and len(folders[0]) == 1:
        folders = folders[1:]
    return "_".join(folders)


def _expected_layout() -> str:
    return (
        f"Expected a folder with images/ (or data/vision/torralba/deeplearning/images256/) and "
        f"{LIST_DIR}/train_places205.csv and val_places205.csv (or those two files directly in "
        f"it), each line {_LINE_FORMAT}; {_SYNTH_HINT}"
    )


def _read_list(path: Path) -> tuple[list[str], np.ndarray]:
    """Relative paths and int64 labels of a list file; blank lines are skipped."""
    paths: list[str] = []
    labels: list[int] = []
    with io.StringIO(read_list_text(path, _LINE_FORMAT)) as handle:
        for line_no, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            text = line.rstrip("\r\n")
            if len(fields) != 2:
                raise DatasetError(
                    f"{path}:{line_no}: expected {_LINE_FORMAT}, got {text!r}"
                )
            try:
                label = int(fields[1])
            except ValueError:
                raise DatasetError(
                    f"{path}:{line_no}: label {fields[1]!r} is not an integer; got {text!r}"
                ) from None
            if label < 0:
                raise DatasetError(
                    f"{path}:{line_no}: label {label} is negative; expected a class index >= 0 "
                    f"(0..{PLACES205_NUM_CLASSES - 1} for Places205), got {text!r}"
                )
            if os.path.isabs(fields[0]) or os.path.normpath(fields[0]).split(os.sep)[0] == "..":
                raise DatasetError(
                    f"{path}:{line_no}: path {fields[0]!r} leaves the images folder; list paths must be "
                    f"relative to it and stay inside it, e.g. 'a/abbey/00000001.jpg'"
                )
            paths.append(fields[0])
            labels.append(label)
    if not paths:
        raise DatasetError(
            f"list file {path} lists no images; expected one line {_LINE_FORMAT} per image"
        )
    return paths, np.asarray(labels, dtype=np.int64)


def _image_paths(image_dir: Path, relative: list[str], list_path: Path) -> list[Path]:
    """Paths of the images, each inside ``image_dir``; only their existence is checked so loading
    stays fast."""
    paths = [inside_dataset(image_dir, r, str(list_path), option=False) for r in relative]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:5])
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise DatasetError(
            f"{len(missing)} image(s) listed in {list_path} are missing: {shown}{more}; "
            f"expected the paths in the list files to be relative to {image_dir}"
        )
    return paths
