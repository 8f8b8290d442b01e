"""The SVM protocol of Goyal et al. 2019 that every solver follows: cost lists, feature
normalisation, training labels, the CV precondition, and what a solve reports (``FitLog``,
``ClassResult``). The solvers themselves are ``liblinear`` (the reference's loop) and ``batched``
(many problems at once on ``newton``); ``solvers`` puts both behind one interface."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError, FeatureError

if TYPE_CHECKING:  # only named in an annotation: scikit-learn is imported where fits happen
    from sklearn.svm import LinearSVC

# fair_ssb's list, in its order (argmax ties resolve to the earlier cost, as in the reference).
REFERENCE_COSTS = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0) + tuple(
    0.5 ** k for k in range(4, 20)
)
VISSL_COSTS = (0.01, 0.1, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 50.0, 100.0, 1000.0)
# the SVM solvers (benchmark.svm.solvers), named here so that a task declares its options without importing them
SOLVERS = ("torch", "liblinear")
COST_LISTS = {"reference": REFERENCE_COSTS, "vissl": VISSL_COSTS}
MAX_ITER = 2000
TOL = 1e-4
TEST_SELECTED = "reference(test-set)"  # cost_selection of the reference: argmax of mean TEST mAP


def resolve_costs(costs, task: str) -> tuple[str, tuple[float, ...]]:
    """A named cost list ('reference', 'vissl') or explicit numbers -> (name, costs)."""
    if isinstance(costs, str):
        if costs not in COST_LISTS:
            raise ConfigError(f"{task}: unknown cost list '{costs}'; use one of {sorted(COST_LISTS)} "
                              f"or a list of numbers")
        return costs, COST_LISTS[costs]
    values = tuple(float(c) for c in costs)
    if not values or min(values) <= 0:
        raise ConfigError(f"{task}: costs must be positive numbers, got {costs}")
    return "custom", values


def l2_normalize(features: np.ndarray) -> np.ndarray:
    """x / (||x|| + 1e-5) in float64, as the reference does before every SVM."""
    features = np.asarray(features, dtype=np.float64)
    return features / (np.linalg.norm(features, axis=1, keepdims=True) + 1e-5)


@dataclass
class FitLog:
    """Convergence of every liblinear fit of one class: never hidden from the results."""

    fits: int = 0
    not_converged: int = 0
    max_iter_seen: int = 0

    def add(self, clf: LinearSVC) -> None:
        n_iter = int(np.max(clf.n_iter_))
        self.record(n_iter, n_iter < MAX_ITER)

    def record(self, n_iter: int, converged: bool) -> None:
        self.fits += 1
        self.max_iter_seen = max(self.max_iter_seen, n_iter)
        self.not_converged += not converged

    def merge(self, other: "FitLog") -> None:
        self.fits += other.fits
        self.not_converged += other.not_converged
        self.max_iter_seen = max(self.max_iter_seen, other.max_iter_seen)


def to_binary(labels: np.ndarray) -> np.ndarray:
    """Training labels: present -> +1; absent and difficult-only -> -1 (the reference's choice)."""
    return np.where(np.asarray(labels) == 1, 1, -1)


@dataclass
class ClassResult:
    cls: int
    costs: tuple[float, ...]
    cv_ap: list[float] = field(default_factory=list)  # per cost, same order as costs
    best_cost: float = float("nan")
    best_cv_ap: float = float("nan")
    test_ap: float = float("nan")
    log: FitLog = field(default_factory=FitLog)
    note: str = ""


def too_few_for_cv(y: np.ndarray, folds: int) -> str:
    """Why a class cannot be cross-validated (fewer positives or negatives than folds), or ''."""
    n_pos = int((y == 1).sum())
    if n_pos < folds or (y == -1).sum() < folds:
        return f"only {n_pos} positive training images: fewer than the {folds} CV folds"
    return ""


def normalized_features(train_features, test_features) -> tuple[np.ndarray, np.ndarray]:
    """Both splits L2-normalised; NaN/inf anywhere is an error, not an SVM input."""
    X_train, X_test = l2_normalize(train_features), l2_normalize(test_features)
    for name, X in (("train", X_train), ("test", X_test)):
        if not np.isfinite(X).all():
            raise FeatureError(f"{name} features contain NaN/inf; cannot train SVMs on them")
    return X_train, X_test


