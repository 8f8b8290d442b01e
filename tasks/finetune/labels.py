"""The labelled images of semi-supervised fine-tuning: a class-balanced fraction drawn from a
recorded seed, or the images a list file names (SimCLR's published 1 % / 10 % ImageNet lists: one
file name per line, e.g. ``n01440764_10026.JPEG``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from benchmark.datasets.splits import SplitPart
from benchmark.errors import ConfigError, DatasetError

_FRACTION_TAG = 0x1ABE1  # keeps the label draw's stream apart from the validation carve-out's


def balanced_fraction(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted positions of ``round(fraction x n_c)`` images of every class c (at least one), drawn
    without replacement from ``seed``: the same positions for the same labels, fraction and seed."""
    rng = np.random.default_rng([seed, _FRACTION_TAG])
    chosen = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        take = min(len(members), max(1, int(round(fraction * len(members)))))
        chosen.append(rng.choice(members, take, replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def image_name(path) -> str:
    """The file name a label list names (an image decoded from a container has its origin string)."""
    return path.name if isinstance(path, Path) else str(path)


def read_label_list(path: Path) -> set[str]:
    """The file names of a label list (blank lines and surrounding spaces ignored)."""
    if not path.is_file():
        raise ConfigError(f"finetune: label_list {path} does not exist; give a file with one image file name per "
                          f"line (relative paths are read from the data root)")
    names = {line.strip() for line in path.read_text().splitlines() if line.strip()}
    if not names:
        raise ConfigError(f"finetune: label_list {path} names no image; expected one image file name per line")
    return names


def listed_positions(part: SplitPart, names: set[str]) -> np.ndarray:
    """Positions within ``part`` of the images whose file name is in ``names``."""
    paths = part.split.image_paths
    return np.array([i for i, index in enumerate(part.indices) if image_name(paths[index]) in names], dtype=np.int64)


def check_list_covered(parts: list[SplitPart], names: set[str], list_path: Path) -> None:
    """Every listed name is an image of the parts: a list for another dataset is refused, not half-used."""
    found = {image_name(part.split.image_paths[i]) for part in parts for i in part.indices}
    missing = sorted(names - found)
    if missing:
        raise DatasetError(f"finetune: {len(missing)} of the {len(names)} images named in label_list {list_path} "
                           f"are not in the training or validation part, e.g. {missing[:3]}; is the list made for "
                           f"this dataset?")


def subset(part: SplitPart, positions: np.ndarray, how: str) -> SplitPart:
    return SplitPart(part.split, part.indices[positions], f"{part.description}, {how}")


def list_digest(names: set[str]) -> str:
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:16]
