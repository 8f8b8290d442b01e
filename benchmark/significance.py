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
  classes of the per-class accuracy, in percent (Aircraft, Pets, Caltech-101, Flowers).

The bootstrap interval resamples test images with replacement (per class, for
``mean_per_class``, so that every class keeps its images) and takes the 2.5 and 97.5 percentiles
of the statistic (percentile method).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

STATISTICS = ("top1", "mean_per_class")
ALPHA = 0.05


@dataclass(frozen=True)
class Outcomes:
    """One model's per-test-image outcomes for a metric: ``values[i]`` for image ``i``, with its
    class in ``classes[i]`` (used by ``mean_per_class``)."""

    statistic: str
    values: np.ndarray
    classes: np.ndarray | None = None

    def __post_init__(self):
        if self.statistic not in STATISTICS:
            raise ValueError(f"statistic {self.statistic!r}; expected one of {', '.join(STATISTICS)}")
        if self.statistic == "mean_per_class" and (self.classes is None or len(self.classes) != len(self.values)):
            raise ValueError("mean_per_class needs each image's class")

    def value(self) -> float:
        return statistic(self.statistic, self.values[None], self.classes)[0]


def statistic(name: str, values: np.ndarray, classes: np.ndarray | None = None) -> np.ndarray:
    """The metric of each row of ``values`` (resamples x images), in percent."""
    values = np.asarray(values, dtype=np.float64)
    if name == "top1":
        return values.mean(axis=1) * 100.0
    labels, index = np.unique(classes, return_inverse=True)
    sums = np.zeros((values.shape[0], len(labels)))
    np.add.at(sums, (slice(None), index), values)  # per resample, per class
    counts = np.bincount(index, minlength=len(labels))
    return (sums / counts).mean(axis=1) * 100.0


def bootstrap_interval(outcomes: Outcomes, n_resamples: int = 2000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """(low, high) percentile interval of the statistic over test images resampled with replacement."""
    rng = np.random.default_rng(seed)
    n = len(outcomes.values)
    if outcomes.statistic == "mean_per_class":  # stratified: every class keeps its count of images
        members = [np.flatnonzero(outcomes.classes == c) for c in np.unique(outcomes.classes)]
        index = np.concatenate([m[rng.integers(0, len(m), size=(n_resamples, len(m)))] for m in members], axis=1)
    else:
        index = rng.integers(0, n, size=(n_resamples, n))
    # stratified columns keep their class in every resample: the first resample's classes are all's
    classes = outcomes.classes[index[0]] if outcomes.statistic == "mean_per_class" else None
    stats = statistic(outcomes.statistic, outcomes.values[index], classes)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(stats, [tail, 100.0 - tail])
    return float(low), float(high)


def permutation_p_value(model: Outcomes, best: Outcomes, n_permutations: int = 10_000, seed: int = 0,
                        exact_limit: int = 2 ** 16) -> float:
    """One-sided p-value of "``best`` is better than ``model``" on the same test images: the share
    of per-image swaps of the two models' outcomes whose difference (best - model) is at least the
    observed one."""
    if model.statistic != best.statistic or len(model.values) != len(best.values):
        raise ValueError("the two models' outcomes must be of one statistic on the same test images")
    if best.classes is not None and model.classes is not None and not np.array_equal(model.classes, best.classes):
        raise ValueError("the two models were evaluated on different test images (classes differ)")
    a, b = np.asarray(model.values, dtype=np.float64), np.asarray(best.values, dtype=np.float64)
    classes = best.classes if best.classes is not None else model.classes
    observed = statistic(best.statistic, b[None], classes)[0] - statistic(best.statistic, a[None], classes)[0]
    differ = np.flatnonzero(a != b)
    if len(differ) == 0:
        return 1.0
    if 2 ** len(differ) <= exact_limit:
        swaps = np.array(list(itertools.product((False, True), repeat=len(differ))))
        exact = True
    else:
        swaps = np.random.default_rng(seed).random((n_permutations, len(differ))) < 0.5
        exact = False
    first = np.broadcast_to(a, (len(swaps), len(a))).copy()
    second = np.broadcast_to(b, (len(swaps), len(b))).copy()
    first[:, differ] = np.where(swaps, b[differ], a[differ])
    second[:, differ] = np.where(swaps, a[differ], b[differ])
    null = statistic(best.statistic, second, classes) - statistic(best.statistic, first, classes)
    at_least = int(np.sum(null >= observed - 1e-9 * max(1.0, abs(observed))))  # ties count against rejecting
    return at_least / len(swaps) if exact else (1 + at_least) / (1 + len(swaps))


def not_worse_than_best(outcomes: dict[str, Outcomes], alpha: float = ALPHA, **test_options) -> dict[str, float]:
    """model -> p-value against the best model (the best itself: 1.0). A model is "not significantly
    worse than the best" where its p-value exceeds ``alpha``."""
    best = max(outcomes, key=lambda name: outcomes[name].value())
    return {name: 1.0 if name == best else permutation_p_value(o, outcomes[best], **test_options)
            for name, o in outcomes.items()}
