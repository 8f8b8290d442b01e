"""Average precision as the reference protocols define it (not scikit-learn's step-wise AP)."""

from __future__ import annotations

import numpy as np


def precision_recall(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall after each ranked sample, ranked by decreasing score.

    As in the reference code every sample is its own operating point (ties are not grouped); ties
    are broken by a stable order (later index first, as the reference's reversed argsort does).
    """
    y_true = np.asarray(y_true).ravel() > 0
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if y_true.shape != scores.shape:
        raise ValueError(f"y_true has {y_true.size} entries but scores has {scores.size}")
    order = np.argsort(scores, kind="stable")[::-1]
    hits = y_true[order].astype(np.float64)
    tp = np.cumsum(hits)
    fp = np.cumsum(1.0 - hits)
    n_pos = hits.sum()
    precision = tp / (tp + fp)
    recall = tp / n_pos if n_pos > 0 else np.full_like(tp, np.nan)
    return precision, recall


def envelope_ap(precision, recall) -> float:
    """Area under the interpolated (monotone) precision envelope at every recall change: the
    'all-point' AP of VOC2010+ and of the Goyal et al. SVM benchmark."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    change = np.nonzero(mrec[1:] != mrec[:-1])[0] + 1
    return float(np.sum((mrec[change] - mrec[change - 1]) * mpre[change]))


def eleven_point_ap(precision, recall) -> float:
    """VOC2007 11-point interpolated AP: mean over t in {0, 0.1, ..., 1} of max precision at
    recall >= t (0 where that recall is never reached)."""
    precision = np.asarray(precision, dtype=np.float64)
    recall = np.asarray(recall, dtype=np.float64)
    points = []
    for t in np.linspace(0.0, 1.0, 11):
        reached = recall >= t
        points.append(precision[reached].max() if reached.any() else 0.0)
    return float(np.mean(points))


def voc_ap(y_true, scores) -> float:
    """All-point AP of a binary ranking; NaN when there is no positive (AP undefined)."""
    precision, recall = precision_recall(y_true, scores)
    if not np.any(np.asarray(y_true) > 0):
        return float("nan")
    return envelope_ap(precision, recall)


def stepwise_ap(y_true, scores) -> float:
    """scikit-learn's ``average_precision_score`` (the reference's CV scoring): sum over distinct
    score thresholds, highest first, of (recall increase) x precision, tied scores forming one
    threshold. The same number without sklearn's per-call validation, for the many CV folds of a
    batched SVM sweep."""
    y_true = np.asarray(y_true).ravel() > 0
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int(y_true.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")[::-1]
    ranked = scores[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(ranked) != 0), len(ranked) - 1]
    tp = np.cumsum(y_true[order])[last_of_tie]
    precision = tp / (last_of_tie + 1)
    recall_gain = np.diff(np.r_[0, tp]) / n_pos
    return float(np.sum(recall_gain * precision))


def top1_accuracy(y_true, y_pred) -> float:
    """Fraction of samples whose predicted class is the true one."""
    y_true, y_pred = _label_pair(y_true, y_pred)
    return float(np.mean(y_true == y_pred))


def mean_per_class_accuracy(y_true, y_pred) -> float:
    """Mean over the classes present in ``y_true`` of each class's accuracy (its recall), so a
    large class weighs no more than a small one: the metric of Aircraft, Pets, Caltech-101 and
    Flowers in the Kornblith et al. transfer protocol. A class only ever predicted, never true,
    does not enter the mean (as in scikit-learn's ``balanced_accuracy_score``)."""
    y_true, y_pred = _label_pair(y_true, y_pred)
    classes, true_index = np.unique(y_true, return_inverse=True)
    correct = np.bincount(true_index, weights=(y_true == y_pred).astype(np.float64), minlength=len(classes))
    return float(np.mean(correct / np.bincount(true_index, minlength=len(classes))))


def eleven_point_map(labels, scores) -> float:
    """VOC2007 classification mAP: the mean over classes of the 11-point AP of each class's
    ranking. ``labels`` (n, classes) holds 1 (present), 0 (absent) or -1 (only difficult
    instances: left out of that class's ranking, as the VOC devkit does); a class without a
    positive has no AP and does not enter the mean."""
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.ndim != 2 or labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must both be (n, classes)")
    per_class = []
    for c in range(labels.shape[1]):
        kept = labels[:, c] != -1
        truth = labels[kept, c] > 0
        if truth.any():
            precision, recall = precision_recall(truth, scores[kept, c])
            per_class.append(eleven_point_ap(precision, recall))
    return float(np.mean(per_class)) if per_class else float("nan")


def _label_pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true).ravel()
    y_pred = np.asarray(y_pred).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} entries but y_pred has {y_pred.size}")
    if not y_true.size:
        raise ValueError("no samples to score")
    return y_true, y_pred
