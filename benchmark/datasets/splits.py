"""The split objects every single-label classification reader returns (``classification`` for
ImageFolder / CSV / Places205, ``transfer`` for the twelve transfer datasets): an on-disk split,
a part of one (all of it or one side of a carved validation set), a dataset's three parts, and
the stratified carve-out of a validation set with a recorded seed."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmark.errors import DatasetError


@dataclass
class ClassificationSplit:
    """One on-disk split: image ``i`` at ``image_paths[i]`` has class ``labels[i]``."""

    root: Path
    name: str
    image_paths: list[Path]
    labels: np.ndarray  # int64 indices into class_names
    class_names: list[str]
    source: str  # the folder or list file it was read from

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def fingerprint(self) -> str:
        """Cache key of the split: changes when its paths, labels or any image file size change."""
        digest = hashlib.sha256(f"{self.name}\n".encode())
        for path, label in zip(self.image_paths, self.labels.tolist()):
            digest.update(f"{path.relative_to(self.root).as_posix()}\t{label}\t{path.stat().st_size}\n".encode())
        return digest.hexdigest()


@dataclass
class SplitPart:
    """Rows ``indices`` of an on-disk split (all of them, or one side of a carved validation set)."""

    split: ClassificationSplit
    indices: np.ndarray
    description: str  # e.g. "train" or "train minus 10 % carved out (stratified, seed 0)"

    @property
    def labels(self) -> np.ndarray:
        return self.split.labels[self.indices]

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class ClassificationData:
    """A dataset folder with its training, validation and test parts resolved."""

    name: str
    root: Path
    layout: str
    class_names: list[str]
    train: SplitPart
    val: SplitPart
    test: SplitPart
    carved: dict = field(default_factory=dict)  # {fraction, seed} when val was carved out of train
    follow_symlinks: bool = False  # images may be symlinks to files outside the folder
    protocol: dict = field(default_factory=dict)  # how a transfer dataset's splits were chosen, its metric

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def disk_splits(self) -> dict[str, ClassificationSplit]:
        """The on-disk splits the parts read (one entry per split, whose features are extracted once)."""
        return {part.split.name: part.split for part in (self.train, self.val, self.test)}

    def provenance(self) -> dict:
        """What every result row says about the data it was computed on."""
        return {"dataset": self.name, "layout": self.layout, "n_classes": self.num_classes,
                "train_split": self.train.description, "val_split": self.val.description,
                "test_split": self.test.description, "n_train": len(self.train), "n_val": len(self.val),
                "n_test": len(self.test), **({"follow_symlinks": True} if self.follow_symlinks else {}),
                **self.protocol}



def check_files(paths: list[Path], where: str) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:5])
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise DatasetError(f"{len(missing)} image(s) listed in {where} are missing: {shown}{more}")
    empty = [p for p in paths if p.stat().st_size == 0]
    if empty:
        raise DatasetError(f"{len(empty)} image(s) of {where} are empty files (0 bytes), e.g. {empty[0]}; "
                           f"replace or re-extract them")


def carved_parts(train: ClassificationSplit, fraction: float, seed: int,
                 fix: str = "") -> tuple[SplitPart, SplitPart, dict]:
    """(train part, val part, record of the carving): a validation set carved out of ``train`` per
    class (``carve_validation``); a split whose every class has a single image is a DatasetError
    (``fix``: what the user can do instead, appended to the message)."""
    train_idx, val_idx = carve_validation(train.labels, fraction, seed)
    if not len(val_idx):
        raise DatasetError(f"{train.source}: no validation images can be carved out (every class has a single "
                           f"training image)" + (f"; {fix}" if fix else ""))
    how = f"{100 * fraction:g} % of {train.name} per class, seed {seed}"
    return (SplitPart(train, train_idx, f"{train.name} minus val ({how})"),
            SplitPart(train, val_idx, f"val carved from {how}"), {"fraction": fraction, "seed": seed})


def carve_validation(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices), stratified: per class round(fraction x n_c) images to val (at
    least one where the class has two or more, never all of them), drawn from ``seed``."""
    rng = np.random.default_rng([seed, 0xCA7E])
    val = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        take = int(round(fraction * len(members)))
        take = min(max(take, 1 if len(members) >= 2 else 0), len(members) - 1)
        if take:
            val.append(rng.choice(members, take, replace=False))
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return train_idx, val_idx
