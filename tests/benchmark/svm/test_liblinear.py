"""The per-class VOC07 SVM protocol against an independent re-implementation with plain
scikit-learn calls (LinearSVC + cross_val_score), as the reference code makes them."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import cross_val_score
from sklearn.svm import LinearSVC

from benchmark.errors import FeatureError
from benchmark.metrics import voc_ap
from benchmark.svm.liblinear import voc07_svm
from benchmark.svm.protocol import COST_LISTS, REFERENCE_COSTS, VISSL_COSTS, l2_normalize, to_binary

COSTS = (0.01, 0.1, 1.0, 10.0)
N_TRAIN, N_TEST, DIM, N_CLASSES = 60, 50, 20, 3


def _labels(rng: np.random.Generator, n: int) -> np.ndarray:
    """Labels in {1, 0, -1} per (image, class): ~35 % present, ~10 % difficult-only."""
    u = rng.random((n, N_CLASSES))
    return np.where(u < 0.35, 1, np.where(u < 0.45, -1, 0)).astype(np.int8)


def _features(rng: np.random.Generator, labels: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Noisy features carrying some class signal, so that the costs score differently."""
    signal = (labels == 1).astype(np.float64) @ directions
    return (rng.normal(size=(len(labels), DIM)) + 0.8 * signal + 0.5).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(N_CLASSES, DIM))
    train_labels, test_labels = _labels(rng, N_TRAIN), _labels(rng, N_TEST)
    return (
        _features(rng, train_labels, directions), train_labels,
        _features(rng, test_labels, directions), test_labels,
    )


def _reference_class(X_train, labels_train, X_test, labels_test, costs):
    """fair_ssb's per-class SVM, written independently of benchmark.svm.liblinear."""
    X_train = X_train.astype(np.float64)
    X_train = X_train / (np.linalg.norm(X_train, axis=1, keepdims=True) + 1e-5)
    X_test = X_test.astype(np.float64)
    X_test = X_test / (np.linalg.norm(X_test, axis=1, keepdims=True) + 1e-5)
    y = labels_train.copy().astype(int)
    y[y == 0] = -1  # absent and difficult-only are both negatives in training

    def svm(cost):
        return LinearSVC(C=cost, class_weight={1: 2, -1: 1}, intercept_scaling=1,
                         loss="squared_hinge", dual=True, tol=1e-4, max_iter=2000, random_state=0)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        cv = [float(np.mean(cross_val_score(svm(c), X_train, y, cv=3, scoring="average_precision")))
              for c in costs]
        best = int(np.argmax(cv))
        clf = svm(costs[best]).fit(X_train, y)
    keep = labels_test != -1
    test_ap = voc_ap(labels_test[keep] == 1, clf.decision_function(X_test[keep]))
    return costs[best], cv, test_ap


@pytest.fixture(scope="module")
def results(data):
    return voc07_svm(*data, costs=COSTS, folds=3, n_jobs=1, seed=0)


@pytest.fixture(scope="module")
def reference(data):
    X_train, y_train, X_test, y_test = data
    return [_reference_class(X_train, y_train[:, c], X_test, y_test[:, c], COSTS) for c in range(N_CLASSES)]


def test_matches_independent_sklearn_reimplementation(results, reference) -> None:
    assert [r.cls for r in results] == list(range(N_CLASSES))
    for result, (best_cost, cv, test_ap) in zip(results, reference):
        assert result.note == ""
        assert result.costs == COSTS
        np.testing.assert_allclose(result.cv_ap, cv, rtol=0, atol=1e-12)
        assert result.best_cost == best_cost
        assert result.best_cv_ap == pytest.approx(max(cv), abs=1e-12)
        assert result.test_ap == pytest.approx(test_ap, abs=1e-12)
        assert 0.0 < result.test_ap <= 1.0


def test_costs_actually_matter_in_this_data(results) -> None:
    # guards the comparison above against a degenerate case where every cost scores the same
    assert any(np.ptp(r.cv_ap) > 1e-3 for r in results)


def test_test_ap_ignores_difficult_rows(data, results) -> None:
    # re-scoring with difficult-only rows counted as negatives must give another number for at
    # least one class, so the removal is observable
    X_train, y_train, X_test, y_test = data
    assert (y_test == -1).any(axis=0).all()
    changed = 0
    for c, result in enumerate(results):
        _, _, ap_removed = _reference_class(X_train, y_train[:, c], X_test, y_test[:, c], (result.best_cost,))
        assert result.test_ap == pytest.approx(ap_removed, abs=1e-12)
        y_kept = np.where(y_test[:, c] == -1, 0, y_test[:, c])
        _, _, ap_kept = _reference_class(X_train, y_train[:, c], X_test, y_kept, (result.best_cost,))
        changed += abs(ap_kept - ap_removed) > 1e-9
    assert changed > 0


def test_fit_log_counts_every_fit(results) -> None:
    # per class: one fit per (cost, fold) plus the refit at the chosen cost
    for result in results:
        assert result.log.fits == len(COSTS) * 3 + 1
        assert 0 < result.log.max_iter_seen < 2000
        assert result.log.not_converged == 0


def test_first_cost_wins_ties() -> None:
    # separable data: every cost ranks the folds perfectly (CV AP 1 for all), so argmax must pick
    # the first cost of the list, in either order (the reference's np.argmax)
    rng = np.random.default_rng(1)
    labels = _labels(rng, 45)[:, :1]
    X = rng.normal(scale=0.01, size=(45, DIM)) + np.where(labels == 1, 1.0, -1.0) * np.eye(DIM)[0] + 2.0
    for costs in [(10.0, 1.0, 0.1), (0.1, 1.0, 10.0)]:
        out = voc07_svm(X, labels, X, labels, costs=costs, folds=3)[0]
        assert out.cv_ap == pytest.approx([1.0, 1.0, 1.0], abs=1e-12)
        assert out.cv_ap[0] == out.cv_ap[1] == out.cv_ap[2]
        assert out.best_cost == costs[0]


def test_class_with_fewer_positives_than_folds_is_noted_not_fatal(data) -> None:
    X_train, y_train, X_test, y_test = data
    y_train = y_train.copy()
    pos = np.flatnonzero(y_train[:, 1] == 1)
    y_train[pos[2:], 1] = 0  # only 2 positives left in class 1, fewer than 3 folds
    out = voc07_svm(X_train, y_train, X_test, y_test, costs=(1.0,), folds=3)
    assert "2 positive" in out[1].note and "3" in out[1].note
    assert math.isnan(out[1].test_ap) and math.isnan(out[1].best_cost)
    assert out[1].cv_ap == [] and out[1].log.fits == 0
    # the other classes are unaffected
    for c in (0, 2):
        assert out[c].note == "" and 0 < out[c].test_ap <= 1


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("which", ["train", "test"])
def test_non_finite_features_raise_feature_error(data, bad, which) -> None:
    X_train, y_train, X_test, y_test = (np.array(a, copy=True) for a in data)
    (X_train if which == "train" else X_test)[3, 5] = bad
    with pytest.raises(FeatureError, match=which):
        voc07_svm(X_train, y_train, X_test, y_test, costs=(1.0,))


# --- helpers ---------------------------------------------------------------------------------


def test_l2_normalize_matches_reference_formula() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-6, 0.0]], dtype=np.float32)
    out = l2_normalize(x)
    assert out.dtype == np.float64
    # row 0: ||x|| = 5 -> x / 5.00001; row 1 stays 0 (no division by zero);
    # row 2: 1e-6 / (1e-6 + 1e-5) = 1/11
    np.testing.assert_allclose(out[0], [3 / 5.00001, 4 / 5.00001], rtol=1e-12)
    np.testing.assert_array_equal(out[1], [0.0, 0.0])
    np.testing.assert_allclose(out[2], [float(np.float32(1e-6)) / (float(np.float32(1e-6)) + 1e-5), 0.0],
                               rtol=1e-12)


def test_l2_normalize_row_norms() -> None:
    x = np.random.default_rng(5).normal(size=(10, 7)) * np.arange(1, 11)[:, None]
    norms = np.linalg.norm(x, axis=1)
    np.testing.assert_allclose(np.linalg.norm(l2_normalize(x), axis=1), norms / (norms + 1e-5), rtol=1e-12)


def test_reference_costs_are_fair_ssb_list_in_order() -> None:
    expected = [1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0] + [
        0.0625, 0.03125, 0.015625, 0.0078125, 0.00390625, 0.001953125, 0.0009765625,
        0.00048828125, 0.000244140625, 0.0001220703125, 6.103515625e-05, 3.0517578125e-05,
        1.52587890625e-05, 7.62939453125e-06, 3.814697265625e-06, 1.9073486328125e-06,
    ]
    assert len(REFERENCE_COSTS) == 26
    assert list(REFERENCE_COSTS) == expected
    assert list(VISSL_COSTS) == [0.01, 0.1, 1, 2, 5, 10, 15, 20, 50, 100, 1000]
    assert COST_LISTS == {"reference": REFERENCE_COSTS, "vissl": VISSL_COSTS}


def test_to_binary() -> None:
    np.testing.assert_array_equal(to_binary(np.array([1, 0, -1, 1, 0])), [1, -1, -1, 1, -1])
    np.testing.assert_array_equal(to_binary(np.array([[1, -1], [0, 1]], dtype=np.int8)), [[1, -1], [-1, 1]])


def test_span_coordinates_give_the_reference_answers() -> None:
    """n < d: the exact change of coordinates must not change any CV AP, cost or test AP."""
    rng = np.random.default_rng(3)
    n_train, n_test, dim = 40, 30, 300
    labels_train, labels_test = _labels(rng, n_train), _labels(rng, n_test)
    directions = rng.normal(size=(N_CLASSES, dim))
    signal = lambda labels: (labels == 1).astype(np.float64) @ directions  # noqa: E731
    X_train = np.abs(rng.normal(size=(n_train, dim)) + 0.4 * signal(labels_train))
    X_test = np.abs(rng.normal(size=(n_test, dim)) + 0.4 * signal(labels_test))
    plain = voc07_svm(X_train, labels_train, X_test, labels_test, costs=COSTS, span_trick=False)
    span = voc07_svm(X_train, labels_train, X_test, labels_test, costs=COSTS, span_trick=True)
    for a, b in zip(plain, span):
        assert a.best_cost == b.best_cost
        np.testing.assert_allclose(b.cv_ap, a.cv_ap, atol=1e-9)
        assert b.test_ap == pytest.approx(a.test_ap, abs=1e-9)


def test_span_coordinates_preserve_inner_products() -> None:
    from benchmark.svm.liblinear import span_coordinates

    rng = np.random.default_rng(4)
    X_train, X_test = rng.normal(size=(15, 60)), rng.normal(size=(7, 60))
    Z_train, Z_test = span_coordinates(X_train, X_test)
    assert Z_train.shape == (15, 15) and Z_test.shape == (7, 15)
    np.testing.assert_allclose(Z_train @ Z_train.T, X_train @ X_train.T, atol=1e-10)
    np.testing.assert_allclose(Z_test @ Z_train.T, X_test @ X_train.T, atol=1e-10)
