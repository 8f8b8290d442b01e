"""Low-shot SVMs (Goyal et al. 2019): seeded samples, two cost selections, aggregation over samples
(the SVMs themselves: ``benchmark.svm.solvers``).

The reference trains, for each k and each of 5 samples, one SVM per class and cost on the sample,
tests each on the full test set, and reports the cost with the best mean TEST mAP ("reference"
selection; the numbers are selected on test, which the report says). ssl-bench also offers a
"validation" selection that never looks at the test set.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np

from benchmark.errors import DatasetError
from benchmark.options import Int, ListOf
from benchmark.paths import atomic_write, inside
from ..common import Aggregate, aggregate  # noqa: F401  (the aggregation every draw-based task shares)
from benchmark.svm.protocol import TEST_SELECTED  # noqa: F401  (the reference's selection, named in the rows)

logger = logging.getLogger(__name__)

K_VALUES = (1, 2, 4, 8, 16, 32, 64, 96)
NUM_SAMPLES = 5
# the options of both low-shot tasks (see benchmark.options)
K_SHOTS = ListOf(Int(min=1), list(K_VALUES), min_length=1, unique=True)
SAMPLES = Int(NUM_SAMPLES, min=1)


# --- samples -------------------------------------------------------------------------------


def sample_voc07(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """The reference's sample format: an (n, C) matrix, -1 = ignored, 1 = one of the k positives,
    0 = one of the (C-1)k negatives of that class. Difficult-only rows (-1) are never drawn."""
    n, num_classes = labels.shape
    sample = np.full((n, num_classes), -1, dtype=np.int8)
    for c in range(num_classes):
        positives = np.flatnonzero(labels[:, c] == 1)
        negatives = np.flatnonzero(labels[:, c] == 0)
        n_neg = (num_classes - 1) * k
        if len(positives) < k or len(negatives) < n_neg:
            raise ValueError(f"class {c} has {len(positives)} positives / {len(negatives)} negatives, "
                             f"k={k} needs {k} / {n_neg}")
        sample[rng.choice(negatives, n_neg, replace=False), c] = 0
        sample[rng.choice(positives, k, replace=False), c] = 1
    return sample


def voc07_max_k(labels: np.ndarray) -> int:
    """Largest k every class can supply (k positives and (C-1)k negatives)."""
    num_classes = labels.shape[1]
    pos = (labels == 1).sum(axis=0).min()
    neg = (labels == 0).sum(axis=0).min()
    return int(min(pos, neg // (num_classes - 1)))


def sample_places(labels: np.ndarray, num_classes: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of k images per class (sorted), drawn without replacement."""
    chosen = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if len(members) < k:
            raise ValueError(f"class {c} has {len(members)} images, k={k}")
        chosen.append(rng.choice(members, k, replace=False))
    return np.sort(np.concatenate(chosen))


def sample_rng(seed: int, k: int, sample: int) -> np.random.Generator:
    """One independent stream per (seed, k, sample): adding a k never changes the other samples."""
    return np.random.default_rng([seed, k, sample])


def load_or_draw(path: Path, draw) -> np.ndarray:
    """Samples are files: drawn once from the recorded seed, then always read back, so a rerun or
    another machine uses the identical images."""
    if path.exists():
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            # the draw is a function of the recorded seed: drawing again restores the same sample
            logger.warning(f"ssl-bench: warning: low-shot sample file {path} is damaged ({type(exc).__name__}: {exc}); "
                           f"drawing it again from its seed")
    sample = draw()
    buffer = io.BytesIO()
    np.save(buffer, sample)
    atomic_write(path, buffer.getvalue())
    return sample


def reference_sample_file(directory: Path, sample: int, k: int) -> Path:
    """fair_ssb's file name for sample index 1..5: train_targets_sample{s}_k{k}.npy."""
    return Path(directory) / f"train_targets_sample{sample}_k{k}.npy"


def load_reference_voc_sample(directory: Path, sample: int, k: int, n: int, num_classes: int) -> np.ndarray:
    path = reference_sample_file(directory, sample, k)
    if not path.exists():
        raise DatasetError(f"low-shot sample file {path} does not exist (expected the reference's "
                           f"train_targets_sample{{1..5}}_k{{k}}.npy files in {directory})")
    matrix = np.load(path, allow_pickle=False)
    if matrix.shape != (n, num_classes) or not np.isin(matrix, (-1, 0, 1)).all():
        raise DatasetError(f"{path}: expected a {n} x {num_classes} matrix of 1/0/-1 (the trainval "
                           f"split's size), got shape {matrix.shape}")
    return matrix.astype(np.int8)


def check_voc_sample(matrix: np.ndarray, labels: np.ndarray, path: Path) -> np.ndarray:
    """A sample read from disk must belong to these labels: same shape, its positives labelled 1
    and its negatives labelled 0 (a file from another split or dataset is an error, not data)."""
    if matrix.shape != labels.shape:
        raise DatasetError(f"{path}: a {matrix.shape} sample for a {labels.shape} label matrix; it was "
                           f"drawn for another split or dataset. Delete it to draw again.")
    wrong = ((matrix == 1) & (labels != 1)) | ((matrix == 0) & (labels != 0))
    if wrong.any():
        raise DatasetError(f"{path}: {int(wrong.sum())} sampled entries disagree with the labels (a "
                           f"positive that is not labelled 1 or a negative not labelled 0); it was drawn "
                           f"for other data. Delete it to draw again.")
    return matrix


def check_places_sample(indices: np.ndarray, labels: np.ndarray, num_classes: int, k: int, path: Path) -> np.ndarray:
    if indices.ndim != 1 or len(indices) == 0 or indices.min() < 0 or indices.max() >= len(labels):
        raise DatasetError(f"{path}: indices outside the {len(labels)} training images; it was drawn for "
                           f"other data. Delete it to draw again.")
    counts = np.bincount(labels[indices], minlength=num_classes)
    if not (counts == k).all():
        raise DatasetError(f"{path}: expected {k} images of every class, found counts {sorted(set(counts))}; "
                           f"it was drawn for other data. Delete it to draw again.")
    return indices


def sample_directory(run_dir: Path, task: str, split, seed: int) -> Path:
    """Samples belong to a dataset split (fingerprinted) and a seed, never to a model."""
    return inside(run_dir, "lowshot_samples", task, f"{split.split}-{split.fingerprint()[:12]}", f"seed{seed}")


# --- selection and aggregation -------------------------------------------------------------


def reference_selection(map_per_cost: np.ndarray) -> int:
    """(samples, costs) mAP -> index of the cost with the best mean over samples (first on ties),
    as fair_ssb's aggregate script does. This looks at the TEST set."""
    return int(np.argmax(map_per_cost.mean(axis=0)))


def lowshot_rows(common: dict, k: int, per_sample: np.ndarray, selection: str, cost, metric: str) -> list[dict]:
    """Per-sample rows plus mean/std/min/max/ci95 rows of one (k, selection)."""
    base = {**common, "k": k, "cost_selection": selection, "cost": cost}
    rows = [{**base, "metric": metric, "sample": s + 1, "value": float(v)} for s, v in enumerate(per_sample)]
    agg = aggregate(per_sample)
    for name in ("mean", "std", "min", "max", "ci95"):
        rows.append({**base, "metric": f"{metric}_{name}", "sample": "", "value": getattr(agg, name)})
    return rows
