"""Per-class linear SVMs exactly as the reference trains them (scikit-learn's liblinear).

L2-regularised squared hinge, bias as a regularised constant feature (intercept_scaling 1),
class weights positive 2 : negative 1, dual coordinate descent, tol 1e-4, at most 2000
iterations; costs chosen per class by 3-fold stratified CV (no shuffling) scored by AP.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import average_precision_score
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import LinearSVC

from .errors import ConfigError, FeatureError
from .metrics import voc_ap

# fair_ssb's list, in its order (argmax ties resolve to the earlier cost, as in the reference).
REFERENCE_COSTS = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0) + tuple(
    0.5 ** k for k in range(4, 20)
)
VISSL_COSTS = (0.01, 0.1, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 50.0, 100.0, 1000.0)
COST_LISTS = {"reference": REFERENCE_COSTS, "vissl": VISSL_COSTS}
MAX_ITER = 2000
TOL = 1e-4


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


SOLVERS = ("torch", "liblinear")


def check_solver(solver: str, task: str) -> str:
    if solver not in SOLVERS:
        raise ConfigError(f"{task}: unknown solver '{solver}'; use 'torch' (batched, the default) or "
                          f"'liblinear' (the reference's LinearSVC loop)")
    return solver


def l2_normalize(features: np.ndarray) -> np.ndarray:
    """x / (||x|| + 1e-5) in float64, as the reference does before every SVM."""
    features = np.asarray(features, dtype=np.float64)
    return features / (np.linalg.norm(features, axis=1, keepdims=True) + 1e-5)


def make_svm(cost: float, seed: int = 0) -> LinearSVC:
    return LinearSVC(
        C=cost, class_weight={1: 2, -1: 1}, intercept_scaling=1.0, penalty="l2",
        loss="squared_hinge", dual=True, tol=TOL, max_iter=MAX_ITER, random_state=seed,
    )


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


def fit_svm(X: np.ndarray, y: np.ndarray, cost: float, log: FitLog, seed: int = 0) -> LinearSVC:
    clf = make_svm(cost, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # recorded in FitLog instead
        clf.fit(X, y)
    log.add(clf)
    return clf


def to_binary(labels: np.ndarray) -> np.ndarray:
    """Training labels: present -> +1; absent and difficult-only -> -1 (the reference's choice)."""
    return np.where(np.asarray(labels) == 1, 1, -1)


def cv_average_precision(X, y, cost: float, folds: int, log: FitLog, seed: int = 0) -> float:
    """Mean AP over stratified folds without shuffling (scikit-learn's ``cross_val_score`` with
    scoring='average_precision', which the reference calls)."""
    scores = []
    for train_idx, val_idx in StratifiedKFold(n_splits=folds, shuffle=False).split(X, y):
        clf = fit_svm(X[train_idx], y[train_idx], cost, log, seed)
        scores.append(average_precision_score(y[val_idx] == 1, clf.decision_function(X[val_idx])))
    return float(np.mean(scores))


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


def train_and_test_class(cls, X_train, labels_train, X_test, labels_test, costs, folds, seed) -> ClassResult:
    result = ClassResult(cls=cls, costs=tuple(costs))
    y = to_binary(labels_train)
    result.note = too_few_for_cv(y, folds)
    if result.note:
        return result
    result.cv_ap = [cv_average_precision(X_train, y, c, folds, result.log, seed) for c in costs]
    best = int(np.argmax(result.cv_ap))
    result.best_cost, result.best_cv_ap = float(costs[best]), result.cv_ap[best]
    clf = fit_svm(X_train, y, result.best_cost, result.log, seed)
    keep = np.asarray(labels_test) != -1  # difficult-only rows are removed for this class at test
    result.test_ap = voc_ap(np.asarray(labels_test)[keep] == 1, clf.decision_function(X_test[keep]))
    return result


def span_coordinates(X_train: np.ndarray, X_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact change of coordinates to the span of the training rows, for n_train < d.

    With X_train^T = Q R (Q: d x n orthonormal), every SVM weight vector trained on any subset of
    the training rows is a combination of those rows, so it lies in span(Q). In the coordinates
    X Q all inner products between training rows are unchanged (X_train Q = R^T), hence liblinear
    solves the same dual problem, and w . x_test = (Q^T w) . (Q^T x_test) for every test row. The
    decision values are the same up to rounding, while each liblinear iteration costs n instead of
    d operations per sample (the reference's 9216-dim layers, n = 5011 on VOC07).
    """
    q, r = np.linalg.qr(X_train.T, mode="reduced")
    return np.ascontiguousarray(r.T), X_test @ q


def voc07_svm(train_features, train_labels, test_features, test_labels, costs=REFERENCE_COSTS,
              folds: int = 3, n_jobs: int = 1, seed: int = 0, span_trick: bool = True) -> list[ClassResult]:
    """The full per-layer protocol: for each class, CV over costs, refit at the best, test AP."""
    X_train, X_test = normalized_features(train_features, test_features)
    if span_trick and X_train.shape[0] < X_train.shape[1]:
        X_train, X_test = span_coordinates(X_train, X_test)
    n_classes = train_labels.shape[1]
    return Parallel(n_jobs=n_jobs)(
        delayed(train_and_test_class)(
            c, X_train, train_labels[:, c], X_test, test_labels[:, c], tuple(costs), folds, seed
        )
        for c in range(n_classes)
    )
