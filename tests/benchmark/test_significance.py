"""Bootstrap intervals and the paired permutation test, against scipy.stats as the oracle."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from benchmark.significance import (Outcomes, bootstrap_interval, not_worse_than_best, permutation_p_value, rank_scores,
                                   statistic)


def _pair(n=14, seed=0):
    rng = np.random.default_rng(seed)
    best = (rng.random(n) < 0.8).astype(float)
    model = (rng.random(n) < 0.5).astype(float)
    return model, best


def test_exact_p_value_equals_scipy_paired_permutation_test():
    for seed in range(4):
        model, best = _pair(seed=seed)
        ours = permutation_p_value(Outcomes("top1", model), Outcomes("top1", best))
        oracle = stats.permutation_test((best, model), lambda x, y, axis: np.mean(x, axis=axis) - np.mean(y, axis=axis),
                                        permutation_type="samples", alternative="greater", n_resamples=np.inf,
                                        vectorized=True)
        assert ours == pytest.approx(oracle.pvalue, abs=1e-12)


def test_sampled_p_value_is_close_to_scipy_on_a_large_test_set():
    rng = np.random.default_rng(3)
    best = (rng.random(400) < 0.62).astype(float)
    model = np.where(rng.random(400) < 0.85, best, 1 - best)  # mostly the same images right
    ours = permutation_p_value(Outcomes("top1", model), Outcomes("top1", best), n_permutations=20_000, seed=1)
    oracle = stats.permutation_test((best, model), lambda x, y, axis: np.mean(x, axis=axis) - np.mean(y, axis=axis),
                                    permutation_type="samples", alternative="greater", n_resamples=20_000,
                                    vectorized=True, random_state=2).pvalue
    assert abs(ours - oracle) < 0.02 and 0.0 < ours < 1.0


def test_mean_per_class_statistic_and_its_test():
    classes = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2])
    correct = np.array([1, 1, 1, 0, 1, 0, 1, 1, 0, 0, 0, 0], dtype=float)
    # per class: 3/4, 1/2, 2/6 -> mean 52.78 %; sklearn's balanced accuracy is the same number
    assert statistic("mean_per_class", correct[None], classes)[0] == pytest.approx((0.75 + 0.5 + 2 / 6) / 3 * 100)
    from sklearn.metrics import balanced_accuracy_score

    predicted = np.where(correct == 1, classes, (classes + 1) % 3)
    assert statistic("mean_per_class", correct[None], classes)[0] == pytest.approx(
        balanced_accuracy_score(classes, predicted) * 100)
    better = np.ones_like(correct)
    p = permutation_p_value(Outcomes("mean_per_class", correct, classes), Outcomes("mean_per_class", better, classes))

    def mpc(x, y, axis):
        return (statistic("mean_per_class", np.atleast_2d(x), classes)
                - statistic("mean_per_class", np.atleast_2d(y), classes))
    oracle = stats.permutation_test((better, correct), mpc, permutation_type="samples", alternative="greater",
                                    n_resamples=np.inf, vectorized=True).pvalue
    assert p == pytest.approx(oracle, abs=1e-12)


def test_bootstrap_interval_matches_scipy_percentile_interval():
    rng = np.random.default_rng(5)
    correct = (rng.random(300) < 0.7).astype(float)
    low, high = bootstrap_interval(Outcomes("top1", correct), n_resamples=4000, seed=0)
    oracle = stats.bootstrap((correct * 100,), np.mean, method="percentile", n_resamples=4000, random_state=1,
                             confidence_level=0.95).confidence_interval
    assert low == pytest.approx(oracle.low, abs=1.0) and high == pytest.approx(oracle.high, abs=1.0)
    assert low < correct.mean() * 100 < high
    # the normal approximation's half-width sqrt(p(1-p)/n) x 1.96 in percent
    assert (high - low) / 2 == pytest.approx(1.96 * np.sqrt(0.7 * 0.3 / 300) * 100, rel=0.15)


def test_the_stratified_bootstrap_keeps_every_class():
    classes = np.repeat([0, 1], [5, 50])
    correct = np.concatenate([np.zeros(5), np.ones(50)])  # class 0 always wrong: mean per class is 50 %
    low, high = bootstrap_interval(Outcomes("mean_per_class", correct, classes), n_resamples=500)
    assert low == high == 50.0  # never a resample without class 0


def test_not_worse_than_best_marks():
    rng = np.random.default_rng(0)
    truth = rng.random(500) < 0.75
    outcomes = {"best": Outcomes("top1", truth.astype(float)),
                "tied": Outcomes("top1", np.where(rng.random(500) < 0.02, ~truth, truth).astype(float)),
                "worse": Outcomes("top1", (rng.random(500) < 0.55).astype(float))}
    p = not_worse_than_best(outcomes, n_permutations=5000)
    best = max(outcomes, key=lambda k: outcomes[k].value())
    assert p[best] == 1.0
    assert p["worse"] < 0.05
    assert min(p["tied"], p["best"]) > 0.05 or best == "tied"
    with pytest.raises(ValueError, match="same test images"):
        permutation_p_value(Outcomes("top1", np.ones(3)), Outcomes("top1", np.ones(4)))


# --- VOC2007's 11-point mAP (multi-label: per image, a score and a label for every class)

def _devkit_eleven_point_map(labels: np.ndarray, scores: np.ndarray) -> float:
    """The VOC2007 devkit's VOCevalcls, one class at a time: rank by decreasing confidence (the
    later image first on a tie), difficult images (-1) left out, then the mean over t = 0, 0.1, ...,
    1 of the best precision at recall >= t; classes without a positive left out of the mean."""
    aps = []
    for c in range(labels.shape[1]):
        kept = [i for i in range(len(labels)) if labels[i, c] != -1]
        ranked = sorted(kept, key=lambda i: (scores[i, c], i), reverse=True)
        truth = [labels[i, c] == 1 for i in ranked]
        if not any(truth):
            continue
        tp = fp = 0
        precision, recall = [], []
        for hit in truth:
            tp, fp = tp + hit, fp + (not hit)
            precision.append(tp / (tp + fp))
            recall.append(tp / sum(truth))
        aps.append(np.mean([max([p for p, r in zip(precision, recall) if r >= t], default=0.0)
                            for t in np.arange(0.0, 1.1, 0.1)]))  # the devkit's 0:0.1:1 (3 x 0.1 > 0.3)
    return 100.0 * float(np.mean(aps))


def _multi_label(n, classes, seed, shift=1.0):
    rng = np.random.default_rng(seed)
    labels = rng.choice([1, 0, 0, 0, -1], size=(n, classes))
    scores = np.round(rng.normal(size=(n, classes)) + shift * (labels == 1), 1)  # rounded: ties
    return labels, scores


def test_map_statistic_hand_case_and_devkit():
    # one class, ranked 1 0 1 0: precision 1, 1/2, 2/3, 1/2 at recall 1/2, 1/2, 1, 1 -> six thresholds
    # (0 .. 0.5) at precision 1 and five (0.6 .. 1) at 2/3
    labels, scores = np.array([[1], [0], [1], [0]]), np.array([[0.9], [0.8], [0.7], [0.6]])
    assert statistic("voc07_11point_map", scores[None], labels)[0] == pytest.approx((6 + 5 * 2 / 3) / 11 * 100)
    for seed in range(3):
        labels, scores = _multi_label(40, 5, seed)
        expected = _devkit_eleven_point_map(labels, scores)
        assert statistic("voc07_11point_map", scores[None], labels)[0] == pytest.approx(expected, abs=1e-9)
        # stored as percentile ranks per class: the same rankings, so the same mAP
        assert Outcomes("voc07_11point_map", rank_scores(scores), labels).value() == pytest.approx(expected, abs=1e-9)


def test_map_exact_p_value_equals_scipy_paired_permutation_test():
    labels, good = _multi_label(12, 3, seed=4, shift=2.0)
    _, weak = _multi_label(12, 3, seed=5, shift=0.3)
    best, model = rank_scores(good), rank_scores(weak)
    ours = permutation_p_value(Outcomes("voc07_11point_map", model, labels),
                               Outcomes("voc07_11point_map", best, labels))

    # scipy swaps paired items: each item is an image's row, named by its index in [best; model]
    rows = np.concatenate([best, model])

    def difference(x, y):
        return _devkit_eleven_point_map(labels, rows[x]) - _devkit_eleven_point_map(labels, rows[y])
    oracle = stats.permutation_test((np.arange(12), np.arange(12) + 12), difference, permutation_type="samples",
                                    alternative="greater", n_resamples=np.inf, vectorized=False).pvalue
    assert ours == pytest.approx(oracle, abs=1e-12) and ours < 1.0


def test_map_bootstrap_interval_is_close_to_scipy():
    labels, scores = _multi_label(60, 4, seed=6, shift=1.5)
    low, high = bootstrap_interval(Outcomes("voc07_11point_map", rank_scores(scores), labels), n_resamples=1000)
    oracle = stats.bootstrap((np.arange(60),), lambda i: _devkit_eleven_point_map(labels[i], scores[i]),
                             vectorized=False, method="percentile", n_resamples=1000,
                             random_state=1).confidence_interval
    assert low < _devkit_eleven_point_map(labels, scores) < high
    assert abs(low - oracle.low) < 3.0 and abs(high - oracle.high) < 3.0
