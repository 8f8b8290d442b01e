"""Which differences between models are real: bootstrap intervals over test images and a paired
permutation test against the best model, from each model's per-image outcomes.

The SimCLR paper's transfer table (Chen et al. 2020, Table 8) sets in bold the results "not
significantly worse than the best (p > 0.05, permutation test)". The same test here: for a model
A and the best model B, evaluated on the same test images, the null hypothesis is that the two
are exchangeable per image; under it, swapping A's and B's outcomes on any image is as likely as
not. The p-value is the share of swap patterns whose difference (B - A) is at least the observed
one (one-sided: "not worse than the best"). Only images on which the outcomes differ change the
statistic when swapped, so with few such images every pattern is enumerated (exact test); beyond
``exact_limit`` patterns, ``n_permutations`` random ones are drawn from a fixed seed, and the
p-value is (1 + count) / (1 + n), never zero.

Outcomes are per-image numbers whose statistic is the reported metric:
- ``top1``: correct (1) or not (0); the statistic is their mean, in percent;
- ``mean_per_class``: correct or not, with each image's class; the statistic is the mean over
  classes of the per-class accuracy, in percent (Aircraft, Pets, Caltech-101, Flowers);
- ``voc07_11point_map``: per image, a score for every class, with the image's (n, classes) labels
  (1 present, 0 absent, -1 difficult only); the statistic is VOC2007's 11-point mAP, in percent
  (``benchmark.metrics.eleven_point_map``). AP depends on each class's ranking only, so a task
  stores each class's scores as their percentile ranks among the test images (``rank_scores``):
  the model's mAP is unchanged, and swapping an image's row between two models (the permutation
  test) compares positions in two rankings rather than two models' unrelated score scales.

The bootstrap interval resamples test images with replacement (per class, for
``mean_per_class``, so that every class keeps its images) and takes the 2.5 and 97.5 percentiles
of the statistic (percentile method).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

MAP11 = "voc07_11point_map"
STATISTICS = ("top1", "mean_per_class", MAP11)
ALPHA = 0.05
# resamples or permutations x images x classes held at once by the mAP statistic (about 0.5 GB of float64)
_MAP_CHUNK_ELEMENTS = 1 << 26
# Random resamples (bootstrap) and swap patterns (permutation test) per statistic. mAP ranks every
# class's images again for each one (VOC2007's 4,952 x 20: about 25 ms each on 2 cores), so it
# draws fewer; a p-value still resolves 0.001.
RESAMPLES = {"top1": 2000, "mean_per_class": 2000, MAP11: 1000}
PERMUTATIONS = {"top1": 10_000, "mean_per_class": 10_000, MAP11: 1000}


@dataclass(frozen=True)
class Outcomes:
    """One model's per-test-image outcomes for a metric: ``values[i]`` for image ``i``, with its
    class in ``classes[i]`` (used by ``mean_per_class``); for ``voc07_11point_map``, ``values[i]``
    is image ``i``'s row of class scores and ``classes[i]`` its row of labels."""

    statistic: str
    values: np.ndarray
    classes: np.ndarray | None = None

    def __post_init__(self):
        if self.statistic not in STATISTICS:
            raise ValueError(f"statistic {self.statistic!r}; expected one of {', '.join(STATISTICS)}")
        if self.statistic == "mean_per_class" and (self.classes is None or len(self.classes) != len(self.values)):
            raise ValueError("mean_per_class needs each image's class")
        if self.statistic == MAP11 and (self.classes is None or np.ndim(self.values) != 2
                                        or np.shape(self.classes) != np.shape(self.values)):
            raise ValueError(f"{MAP11} needs (images, classes) scores and labels of the same shape")

    def value(self) -> float:
        return statistic(self.statistic, self.values[None], self.classes)[0]


def statistic(name: str, values: np.ndarray, classes: np.ndarray | None = None) -> np.ndarray:
    """The metric of each row of ``values`` (resamples x images), in percent."""
    values = np.asarray(values, dtype=np.float64)
    if name == "top1":
        return values.mean(axis=1) * 100.0
    if name == MAP11:
        return _eleven_point_map_rows(values, np.asarray(classes))
    labels, index = np.unique(classes, return_inverse=True)
    sums = np.zeros((values.shape[0], len(labels)))
    np.add.at(sums, (slice(None), index), values)  # per resample, per class
    counts = np.bincount(index, minlength=len(labels))
    return (sums / counts).mean(axis=1) * 100.0


def rank_scores(scores: np.ndarray) -> np.ndarray:
    """Each column's scores as their rank among the column's images, divided by the number of
    images (tied scores share their mean rank): the same ranking per class, so the same AP."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=np.float64)
    return rankdata(scores, axis=0, method="average") / len(scores)


def _eleven_point_map_rows(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """VOC2007 11-point mAP of each of ``scores``' rows (rows x images x classes), in percent, with
    ``labels`` (images x classes, or one per row): ``benchmark.metrics.eleven_point_map`` at once
    for every row (same ranking and tie order: equal scores rank the later image first; difficult
    images neither hit nor miss; a class without a positive in a row leaves that row's mean)."""
    rows, n, n_classes = scores.shape
    labels = np.broadcast_to(labels, scores.shape)
    chunk = max(1, _MAP_CHUNK_ELEMENTS // max(1, n * n_classes))
    ap_sum, counted = np.zeros(rows), np.zeros(rows)
    thresholds = np.linspace(0.0, 1.0, 11)
    for start in range(0, rows, chunk):
        part = slice(start, start + chunk)
        for c in range(n_classes):
            order = np.argsort(scores[part, :, c], axis=1, kind="stable")[:, ::-1]
            ranked = np.take_along_axis(labels[part, :, c], order, axis=1)
            tp = np.cumsum(ranked == 1, axis=1, dtype=np.float64)
            fp = np.cumsum(ranked == 0, axis=1, dtype=np.float64)
            positives = tp[:, -1]
            with np.errstate(invalid="ignore", divide="ignore"):
                precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
                recall = tp / positives[:, None]
            # the best precision at any recall >= t is a suffix maximum, read at the first rank reaching t
            best_after = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
            ap = np.zeros(len(tp))
            for t in thresholds:
                reached = recall >= t
                first = reached.argmax(axis=1)
                ap += np.where(reached.any(axis=1), best_after[np.arange(len(tp)), first], 0.0)
            has_positive = positives > 0
            ap_sum[part] += np.where(has_positive, ap / len(thresholds), 0.0)
            counted[part] += has_positive
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counted > 0, ap_sum / counted, np.nan) * 100.0


def bootstrap_interval(outcomes: Outcomes, n_resamples: int | None = None, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """(low, high) percentile interval of the statistic over test images resampled with replacement
    (``n_resamples``: ``RESAMPLES`` of the statistic by default)."""
    n_resamples = n_resamples or RESAMPLES[outcomes.statistic]
    rng = np.random.default_rng(seed)
    n = len(outcomes.values)
    if outcomes.statistic == "mean_per_class":  # stratified: every class keeps its count of images
        members = [np.flatnonzero(outcomes.classes == c) for c in np.unique(outcomes.classes)]
        index = np.concatenate([m[rng.integers(0, len(m), size=(n_resamples, len(m)))] for m in members], axis=1)
    else:
        index = rng.integers(0, n, size=(n_resamples, n))
    if outcomes.statistic == MAP11:  # each resample ranks its own images: labels travel with them
        stats = statistic(MAP11, outcomes.values[index], outcomes.classes[index])
    else:
        # stratified columns keep their class in every resample: the first resample's classes are all's
        classes = outcomes.classes[index[0]] if outcomes.statistic == "mean_per_class" else None
        stats = statistic(outcomes.statistic, outcomes.values[index], classes)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.nanpercentile(stats, [tail, 100.0 - tail])
    return float(low), float(high)


def permutation_p_value(model: Outcomes, best: Outcomes, n_permutations: int | None = None, seed: int = 0,
                        exact_limit: int = 2 ** 16) -> float:
    """One-sided p-value of "``best`` is better than ``model``" on the same test images: the share
    of per-image swaps of the two models' outcomes whose difference (best - model) is at least the
    observed one (``n_permutations``: ``PERMUTATIONS`` of the statistic by default)."""
    if model.statistic != best.statistic or len(model.values) != len(best.values):
        raise ValueError("the two models' outcomes must be of one statistic on the same test images")
    n_permutations = n_permutations or PERMUTATIONS[best.statistic]
    if best.classes is not None and model.classes is not None and not np.array_equal(model.classes, best.classes):
        raise ValueError("the two models were evaluated on different test images (classes differ)")
    a, b = np.asarray(model.values, dtype=np.float64), np.asarray(best.values, dtype=np.float64)
    classes = best.classes if best.classes is not None else model.classes
    observed = statistic(best.statistic, b[None], classes)[0] - statistic(best.statistic, a[None], classes)[0]
    differ = np.flatnonzero((a != b).reshape(len(a), -1).any(axis=1))  # images (rows of class scores for mAP)
    if len(differ) == 0:
        return 1.0
    if 2 ** len(differ) <= exact_limit:
        swaps = np.array(list(itertools.product((False, True), repeat=len(differ))))
        exact = True
    else:
        swaps = np.random.default_rng(seed).random((n_permutations, len(differ))) < 0.5
        exact = False
    null = np.empty(len(swaps))
    # permutations at a time: the mAP statistic holds permutations x images x classes
    chunk = max(1, _MAP_CHUNK_ELEMENTS // a.size)
    for start in range(0, len(swaps), chunk):
        swap = swaps[start:start + chunk].reshape(-1, len(differ), *([1] * (a.ndim - 1)))
        first = np.broadcast_to(a, (len(swap), *a.shape)).copy()
        second = np.broadcast_to(b, (len(swap), *b.shape)).copy()
        first[:, differ] = np.where(swap, b[differ], a[differ])
        second[:, differ] = np.where(swap, a[differ], b[differ])
        null[start:start + len(swap)] = (statistic(best.statistic, second, classes)
                                         - statistic(best.statistic, first, classes))
    at_least = int(np.sum(null >= observed - 1e-9 * max(1.0, abs(observed))))  # ties count against rejecting
    return at_least / len(swaps) if exact else (1 + at_least) / (1 + len(swaps))


def not_worse_than_best(outcomes: dict[str, Outcomes], alpha: float = ALPHA, **test_options) -> dict[str, float]:
    """model -> p-value against the best model (the best itself: 1.0). A model is "not significantly
    worse than the best" where its p-value exceeds ``alpha``."""
    best = max(outcomes, key=lambda name: outcomes[name].value())
    return {name: 1.0 if name == best else permutation_p_value(o, outcomes[best], **test_options)
            for name, o in outcomes.items()}
