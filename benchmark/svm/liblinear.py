"""Per-class linear SVMs exactly as the reference trains them (scikit-learn's liblinear).

L2-regularised squared hinge, bias as a regularised constant feature (intercept_scaling 1),
class weights positive 2 : negative 1, dual coordinate descent, tol 1e-4, at most 2000
iterations; costs chosen per class by 3-fold stratified CV (no shuffling) scored by AP.
"""

from __future__ import annotations

import warnings

import numpy as np
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import average_precision_score
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import LinearSVC

from ..metrics import voc_ap
from .protocol import (MAX_ITER, REFERENCE_COSTS, TOL, ClassResult, FitLog, normalized_features, to_binary,
                       too_few_for_cv)


def make_svm(cost: float, seed: int = 0) -> LinearSVC:
    return LinearSVC(
        C=cost, class_weight={1: 2, -1: 1}, intercept_scaling=1.0, penalty="l2",
        loss="squared_hinge", dual=True, tol=TOL, max_iter=MAX_ITER, random_state=seed,
    )


def fit_svm(X: np.ndarray, y: np.ndarray, cost: float, log: FitLog, seed: int = 0) -> LinearSVC:
    clf = make_svm(cost, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # recorded in FitLog instead
        clf.fit(X, y)
    log.add(clf)
    return clf


def cv_average_precision(X, y, cost: float, folds: int, log: FitLog, seed: int = 0) -> float:
    """Mean AP over stratified folds without shuffling (scikit-learn's ``cross_val_score`` with
    scoring='average_precision', which the reference calls)."""
    scores = []
    for train_idx, val_idx in StratifiedKFold(n_splits=folds, shuffle=False).split(X, y):
        clf = fit_svm(X[train_idx], y[train_idx], cost, log, seed)
        scores.append(average_precision_score(y[val_idx] == 1, clf.decision_function(X[val_idx])))
    return float(np.mean(scores))


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


# --- the low-shot sweeps: every cost on a sample, and the cost chosen by CV on it -------------


def decision_values_all_costs(X_train, y, X_test, costs, seed: int, log: FitLog) -> np.ndarray:
    """(n_test, n_costs) SVM scores, one fit per cost on the same training rows."""
    scores = np.empty((len(X_test), len(costs)))
    for j, cost in enumerate(costs):
        clf = fit_svm(X_train, y, cost, log, seed)
        scores[:, j] = clf.decision_function(X_test)
    return scores


def cv_cost(X, y, costs, folds: int, seed: int, log: FitLog) -> float | None:
    """Cost with the best mean CV AP on the training sample, or None with too few positives."""
    if min((y == 1).sum(), (y == -1).sum()) < folds:
        return None
    aps = [cv_average_precision(X, y, c, folds, log, seed) for c in costs]
    return float(costs[int(np.argmax(aps))])


def lowshot_voc07_class(c, Z_train, Z_test, test_labels, samples, costs, folds, fallback_cost, seed, span=True):
    """One class over all (k, sample): test AP per cost, and the validation-selected cost index
    (``fallback_cost(c)`` where the sample has fewer positives than folds)."""
    keep = test_labels != -1
    y_test = test_labels[keep] == 1
    aps = np.full((len(samples), len(costs)), np.nan)
    chosen = np.zeros(len(samples), dtype=int)
    sources = []
    log = FitLog()
    for i, sample in enumerate(samples):
        rows = np.flatnonzero(sample != -1)
        y = np.where(sample[rows] == 1, 1, -1)
        # a second exact change of basis: the sample's own span is smaller still (20k rows)
        Z_sample, Z_eval = span_coordinates(Z_train[rows], Z_test[keep]) if span else (Z_train[rows], Z_test[keep])
        scores = decision_values_all_costs(Z_sample, y, Z_eval, costs, seed, log)
        aps[i] = [voc_ap(y_test, scores[:, j]) for j in range(len(costs))]
        cost = cv_cost(Z_sample, y, costs, folds, seed, log)
        if cost is None:
            cost, source = fallback_cost(c), "full-data-cv"
        else:
            source = f"{folds}-fold-cv-on-sample"
        # -1: fewer positives than folds even in the full training set, so no validation choice
        chosen[i] = -1 if cost is None else costs.index(cost)
        sources.append(source if cost is not None else "none(too-few-positives)")
    return aps, chosen, sources, log


def lowshot_places_class(c, Z_train, train_labels, Z_val, val_labels, costs, folds, seed):
    """One class of one sample: val scores for every cost, AP per cost, CV-chosen cost index."""
    y = np.where(train_labels == c, 1, -1)
    log = FitLog()
    scores = decision_values_all_costs(Z_train, y, Z_val, costs, seed, log).astype(np.float32)
    aps = np.array([voc_ap(val_labels == c, scores[:, j]) for j in range(len(costs))])
    cost = cv_cost(Z_train, y, costs, folds, seed, log)
    return scores, aps, (None if cost is None else costs.index(cost)), log
