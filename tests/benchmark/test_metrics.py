"""Average precision as the protocol defines it: hand-computed cases and scikit-learn as an oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from benchmark.metrics import envelope_ap, eleven_point_ap, precision_recall, voc_ap

DESCENDING = [4.0, 3.0, 2.0, 1.0]


# --- precision_recall ------------------------------------------------------------------------


def test_precision_recall_hand_case() -> None:
    # ranking [1, 0, 1, 0]: tp 1,1,2,2 / ranks 1,2,3,4 -> precision 1, .5, .667, .5;
    # 2 positives -> recall .5, .5, 1, 1
    precision, recall = precision_recall([1, 0, 1, 0], DESCENDING)
    np.testing.assert_allclose(precision, [1.0, 0.5, 2 / 3, 0.5])
    np.testing.assert_allclose(recall, [0.5, 0.5, 1.0, 1.0])


def test_precision_recall_ranks_by_decreasing_score_not_input_order() -> None:
    # scores 0.1, 0.9, 0.5 -> ranked order is index 1 (pos), 2 (neg), 0 (pos)
    precision, recall = precision_recall([1, 1, 0], [0.1, 0.9, 0.5])
    np.testing.assert_allclose(precision, [1.0, 0.5, 2 / 3])
    np.testing.assert_allclose(recall, [0.5, 0.5, 1.0])


def test_precision_recall_ties_put_later_index_first() -> None:
    # equal scores: the later index (the negative) is ranked first, as the reference's
    # reversed argsort does -> precision 0/1, 1/2; recall 0, 1
    precision, recall = precision_recall([1, 0], [0.5, 0.5])
    np.testing.assert_allclose(precision, [0.0, 0.5])
    np.testing.assert_allclose(recall, [0.0, 1.0])
    # the same tie with the labels swapped ranks the positive first
    precision, _ = precision_recall([0, 1], [0.5, 0.5])
    np.testing.assert_allclose(precision, [1.0, 0.5])


def test_precision_recall_treats_nonpositive_labels_as_negative() -> None:
    # labels 0 and -1 are both negatives; True/1 positive
    p1, r1 = precision_recall([1, -1, 1, 0], DESCENDING)
    p2, r2 = precision_recall([True, False, True, False], DESCENDING)
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(r1, r2)


def test_precision_recall_without_positives_gives_nan_recall() -> None:
    precision, recall = precision_recall([0, 0, 0], [3.0, 2.0, 1.0])
    np.testing.assert_array_equal(precision, [0.0, 0.0, 0.0])
    assert np.isnan(recall).all()


def test_precision_recall_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="3 entries.*2"):
        precision_recall([1, 0, 1], [0.1, 0.2])


# --- all-point AP (envelope) -----------------------------------------------------------------


def test_voc_ap_hand_case_alternating() -> None:
    # precision 1, .5, .667, .5 at recall .5, .5, 1, 1; envelope 1, .667, .667, .5;
    # recall changes 0->.5 (envelope 1) and .5->1 (envelope .667):
    # AP = 0.5 * 1 + 0.5 * 0.667 = 0.8333
    assert voc_ap([1, 0, 1, 0], DESCENDING) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3, abs=1e-12)


def test_voc_ap_hand_case_interpolation_matters() -> None:
    # ranking [0, 1, 1]: precision 0, .5, .667 at recall 0, .5, 1.
    # envelope at recall .5 is max(.5, .667) = .667 -> AP = .5 * .667 + .5 * .667 = .6667
    # scikit-learn's step AP uses the raw precision: .5 * .5 + .5 * .667 = .5833
    y, s = [0, 1, 1], [3.0, 2.0, 1.0]
    assert voc_ap(y, s) == pytest.approx(2 / 3, abs=1e-12)
    assert average_precision_score(y, s) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3, abs=1e-12)


def test_voc_ap_hand_case_last_positive_at_the_end() -> None:
    # ranking [1, 0, 0, 1]: precision 1, .5, .333, .5 at recall .5, .5, .5, 1
    # envelope at the recall change to 1 is .5 -> AP = .5 * 1 + .5 * .5 = 0.75
    assert voc_ap([1, 0, 0, 1], DESCENDING) == pytest.approx(0.75, abs=1e-12)


@pytest.mark.parametrize("n_pos, n_neg", [(1, 0), (1, 5), (4, 7), (10, 1)])
def test_perfect_ranking_has_ap_one(n_pos: int, n_neg: int) -> None:
    y = [1] * n_pos + [0] * n_neg
    scores = np.linspace(1.0, 0.0, n_pos + n_neg)
    assert voc_ap(y, scores) == pytest.approx(1.0, abs=1e-12)


def test_worst_ranking_hand_case() -> None:
    # all 3 negatives first, then 2 positives: precision at the recall changes is 1/4 and 2/5;
    # envelope .4 over the whole recall range -> AP = 0.4
    y = [0, 0, 0, 1, 1]
    assert voc_ap(y, [5.0, 4.0, 3.0, 2.0, 1.0]) == pytest.approx(0.4, abs=1e-12)


def test_voc_ap_without_positives_is_nan() -> None:
    assert math.isnan(voc_ap([0, 0, 0], [0.3, 0.2, 0.1]))
    assert math.isnan(voc_ap([0, -1, 0], [0.3, 0.2, 0.1]))


def _monotone_precision_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random ranking whose precision at each positive is non-increasing.

    Precision at the j-th positive is j / r_j; with the gaps between successive positives
    (the first gap being r_1) non-decreasing, r_j / j is a running mean of a non-decreasing
    sequence, so it does not decrease and j / r_j does not increase. Then the envelope equals
    the raw precision at every recall change and the all-point AP equals scikit-learn's AP.
    """
    n_pos = int(rng.integers(1, 12))
    gaps = np.sort(rng.integers(1, 6, size=n_pos))
    ranks = np.cumsum(gaps)  # 1-based ranks of the positives
    n = int(ranks[-1] + rng.integers(0, 10))
    ranked = np.zeros(n, dtype=int)
    ranked[ranks - 1] = 1
    ranked_scores = np.sort(rng.uniform(-3, 3, size=n))[::-1]
    assert len(np.unique(ranked_scores)) == n  # distinct: scikit-learn groups ties, we don't
    perm = rng.permutation(n)  # present the samples in a random order
    return ranked[perm], ranked_scores[perm]


@pytest.mark.parametrize("seed", range(20))
def test_all_point_ap_equals_sklearn_when_precision_is_monotone(seed: int) -> None:
    y, scores = _monotone_precision_case(np.random.default_rng(seed))
    precision, recall = precision_recall(y, scores)
    at_positives = precision[np.r_[True, np.diff(recall) > 0] & (recall > 0)]
    assert np.all(np.diff(at_positives) <= 1e-12)  # the construction did what it claims
    assert voc_ap(y, scores) == pytest.approx(average_precision_score(y, scores), abs=1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_all_point_ap_is_at_least_sklearn_step_ap(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(5, 60))
    y = (rng.random(n) < rng.uniform(0.1, 0.6)).astype(int)
    y[rng.integers(n)] = 1  # at least one positive
    scores = rng.normal(size=n) + y * rng.uniform(0, 2)  # distinct with probability 1
    ours, theirs = voc_ap(y, scores), average_precision_score(y, scores)
    assert ours >= theirs - 1e-12
    assert 0.0 < ours <= 1.0


def test_all_point_ap_exceeds_sklearn_on_some_random_cases() -> None:
    # the inequality above is strict whenever precision rises after a recall change
    rng = np.random.default_rng(7)
    gaps = []
    for _ in range(30):
        y = (rng.random(40) < 0.3).astype(int)
        y[0] = 1
        scores = rng.normal(size=40)
        gaps.append(voc_ap(y, scores) - average_precision_score(y, scores))
    assert max(gaps) > 0.01


def test_voc_ap_does_not_depend_on_sample_order() -> None:
    rng = np.random.default_rng(3)
    y = (rng.random(30) < 0.4).astype(int)
    scores = rng.normal(size=30)
    perm = rng.permutation(30)
    assert voc_ap(y, scores) == pytest.approx(voc_ap(y[perm], scores[perm]), abs=1e-15)


def test_envelope_ap_directly_with_partial_recall() -> None:
    # a detector that finds 2 of 4 objects: precision 1, .5, .667 at recall .25, .25, .5.
    # envelope: 1 on (0, .25], .667 on (.25, .5], 0 on (.5, 1] (the appended end point)
    # AP = .25 * 1 + .25 * .667 + .5 * 0 = .41667
    ap = envelope_ap(np.array([1.0, 0.5, 2 / 3]), np.array([0.25, 0.25, 0.5]))
    assert ap == pytest.approx(0.25 + 0.25 * 2 / 3, abs=1e-12)


# --- VOC07 11-point AP ------------------------------------------------------------------------


def test_eleven_point_ap_hand_case_full_recall() -> None:
    # ranking [1, 0, 1, 0]: precision 1, .5, .667, .5 at recall .5, .5, 1, 1
    # t = 0, .1, .2, .3, .4, .5 (6 points): max precision at recall >= t is 1
    # t = .6, .7, .8, .9, 1 (5 points): only recall 1 qualifies -> max(.667, .5) = .667
    # AP11 = (6 * 1 + 5 * .667) / 11 = .84848
    precision, recall = precision_recall([1, 0, 1, 0], DESCENDING)
    assert eleven_point_ap(precision, recall) == pytest.approx((6 + 5 * 2 / 3) / 11, abs=1e-12)


def test_eleven_point_ap_hand_case_recall_never_reaches_one() -> None:
    # precision 1, .5, .667 at recall .25, .25, .5 (2 of 4 objects found):
    # t = 0, .1, .2 -> 1 (3 points); t = .3, .4, .5 -> .667 (3 points);
    # t = .6 .. 1 -> recall never reached -> 0 (5 points)
    # AP11 = (3 * 1 + 3 * .667 + 5 * 0) / 11 = 5 / 11 = .45455
    ap = eleven_point_ap(np.array([1.0, 0.5, 2 / 3]), np.array([0.25, 0.25, 0.5]))
    assert ap == pytest.approx(5 / 11, abs=1e-12)


def test_eleven_point_ap_differs_from_all_point_ap() -> None:
    # same ranking [1, 0, 1, 0]: all-point .8333 vs 11-point .8485
    precision, recall = precision_recall([1, 0, 1, 0], DESCENDING)
    assert envelope_ap(precision, recall) == pytest.approx(5 / 6, abs=1e-12)
    assert eleven_point_ap(precision, recall) == pytest.approx(28 / 33, abs=1e-12)


def test_eleven_point_ap_perfect_ranking_is_one() -> None:
    precision, recall = precision_recall([1, 1, 1, 0, 0], [5.0, 4.0, 3.0, 2.0, 1.0])
    assert eleven_point_ap(precision, recall) == pytest.approx(1.0, abs=1e-12)


def test_stepwise_ap_equals_sklearn_average_precision() -> None:
    from sklearn.metrics import average_precision_score

    from benchmark.metrics import stepwise_ap

    rng = np.random.default_rng(7)
    for trial in range(200):
        n = int(rng.integers(2, 60))
        y = rng.random(n) < rng.uniform(0.05, 0.6)
        if not y.any():
            y[0] = True
        # every third trial with heavy ties (scores on a coarse grid)
        scores = rng.normal(size=n) if trial % 3 else rng.integers(0, 4, size=n).astype(float)
        assert stepwise_ap(y, scores) == pytest.approx(average_precision_score(y, scores), abs=1e-12)
    # hand case: ranking + - + -: (0.5 x 1) + (0.5 x 2/3)
    assert stepwise_ap([1, 0, 1, 0], [4, 3, 2, 1]) == pytest.approx(0.5 + 1 / 3)
    assert np.isnan(stepwise_ap([0, 0], [1, 2]))
