"""VOC detection AP against hand-computed cases: duplicates, difficult boxes (including the
devkit's rule that a best match on a difficult box is ignored), empty classes, the strict IoU > 0.5
of VOC vs COCO's >=, and the box IoU against torchvision."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou as tv_box_iou

from tasks.detection.evaluate import Detections, GroundTruth, box_iou, coco_ap, evaluate_detections


def gt(boxes, labels, difficult) -> GroundTruth:
    return GroundTruth(np.array(boxes, dtype=np.float64).reshape(-1, 4), np.array(labels), np.array(difficult, bool))


def dets(rows) -> Detections:
    """rows: (image, label, score, box)."""
    return Detections(np.array([r[0] for r in rows]), np.array([r[1] for r in rows]),
                      np.array([r[2] for r in rows], dtype=float), np.array([r[3] for r in rows], dtype=float))


@pytest.fixture
def case():
    ground_truth = [
        # image 0: class 1 A (normal) and B (difficult); class 2: D difficult and E normal, overlapping;
        #          class 4: one box that nobody detects
        gt([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50], [40, 40, 50, 52], [60, 60, 70, 70]],
           [1, 1, 2, 2, 4], [False, True, True, False, False]),
        # image 1: class 1 C (normal)
        gt([[0, 0, 10, 10]], [1], [False]),
    ]
    detections = dets([
        (0, 1, 0.9, [0, 0, 10, 10]),     # TP (A)
        (0, 1, 0.8, [0, 0, 10, 10]),     # duplicate of A: FP
        (0, 1, 0.7, [20, 20, 30, 30]),   # matches difficult B: ignored
        (1, 1, 0.6, [50, 50, 60, 60]),   # nothing there: FP
        (1, 1, 0.5, [0, 0, 10, 11]),     # C with IoU 100/110: TP
        (0, 2, 0.9, [40, 40, 50, 50]),   # IoU 1 with difficult D, 0.83 with E: ignored (devkit), E missed
        (0, 3, 0.9, [0, 0, 5, 5]),       # class 3 has no ground truth at all
    ])
    return detections, ground_truth


def test_hand_case_eleven_point_all_point_and_coco(case) -> None:
    result = evaluate_detections(*case, num_classes=4)
    # class 1: outcomes TP FP FP TP over 2 positives -> precision 1, 1/2, 1/3, 1/2 at recall .5 .5 .5 1
    # 11-point: recall >= 0..0.5 (6 points) reach precision 1, 0.6..1 (5 points) reach 1/2
    assert result["ap11"][0] == pytest.approx((6 * 1 + 5 * 0.5) / 11)
    assert result["ap_all"][0] == pytest.approx(0.5 * 1 + 0.5 * 0.5)
    # COCO: IoU thresholds .50-.90 (9) as above -> (51 * 1 + 50 * .5) / 101; at .95 the 0.909 match is a FP
    # -> 51 / 101
    assert result["ap50_95"][0] == pytest.approx((9 * 76 / 101 + 51 / 101) / 10)
    # class 2: the only detection is ignored (best match difficult), the normal box is never found
    assert result["ap11"][1] == 0.0 and result["ap_all"][1] == 0.0 and result["positives"][1] == 1
    # class 3: no ground truth -> undefined; class 4: ground truth but no detection -> 0
    assert math.isnan(result["ap11"][2]) and math.isnan(result["ap_all"][2]) and math.isnan(result["ap50_95"][2])
    assert result["ap11"][3] == 0.0 and result["detections"][3] == 0
    assert list(result["positives"]) == [2, 1, 0, 1]
    assert np.nanmean(result["ap11"]) == pytest.approx(((6 + 2.5) / 11 + 0 + 0) / 3)


def test_order_of_detections_does_not_matter_only_scores(case) -> None:
    detections, ground_truth = case
    perm = np.random.default_rng(0).permutation(len(detections.scores))
    shuffled = Detections(detections.images[perm], detections.labels[perm], detections.scores[perm],
                          detections.boxes[perm])
    a, b = evaluate_detections(detections, ground_truth, 4), evaluate_detections(shuffled, ground_truth, 4)
    np.testing.assert_array_equal(a["ap11"], b["ap11"])


def test_iou_of_exactly_half_is_a_miss_for_voc_and_a_hit_for_coco() -> None:
    ground_truth = [gt([[0, 0, 10, 10]], [1], [False])]
    detections = dets([(0, 1, 0.9, [0, 0, 10, 20])])  # IoU 100 / 200 = 0.5
    result = evaluate_detections(detections, ground_truth, 1)
    assert result["ap11"][0] == 0.0
    # COCO at 0.50: a hit (recall 1 at precision 1: 101/101), at 0.55 and above a miss
    assert result["ap50_95"][0] == pytest.approx(1.0 / 10)


def test_ranking_a_false_positive_first() -> None:
    ground_truth = [gt([[0, 0, 10, 10], [20, 0, 30, 10]], [1, 1], [False, False])]
    detections = dets([(0, 1, 0.9, [50, 50, 60, 60]), (0, 1, 0.8, [0, 0, 10, 10]), (0, 1, 0.7, [20, 0, 30, 10])])
    result = evaluate_detections(detections, ground_truth, 1)
    # precision 0, 1/2, 2/3 at recall 0, .5, 1: every 11-point threshold reaches 2/3
    assert result["ap11"][0] == pytest.approx(2 / 3)
    assert result["ap_all"][0] == pytest.approx(2 / 3)
    assert coco_ap(np.array([0, 0.5, 2 / 3]), np.array([0, 0.5, 1.0])) == pytest.approx(2 / 3)


def test_box_iou_matches_torchvision() -> None:
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 50, (30, 2))
    a = np.concatenate([xy, xy + rng.uniform(1, 30, (30, 2))], 1)
    xy = rng.uniform(0, 50, (20, 2))
    b = np.concatenate([xy, xy + rng.uniform(1, 30, (20, 2))], 1)
    expected = tv_box_iou(torch.as_tensor(a), torch.as_tensor(b)).numpy()
    np.testing.assert_allclose(box_iou(a, b), expected, rtol=1e-12, atol=1e-12)


def test_perturbed_ground_truth_is_seeded_and_catches_an_evaluator_change() -> None:
    from tasks.detection.evaluate import perturbed_ground_truth

    rng = np.random.default_rng(0)
    truth = []
    for _ in range(30):
        xy = rng.uniform(0, 200, (3, 2))
        wh = rng.uniform(20, 80, (3, 2))
        truth.append(GroundTruth(np.hstack([xy, xy + wh]), rng.integers(1, 5, 3), rng.random(3) < 0.1))
    first, again = perturbed_ground_truth(truth, 4, seed=0), perturbed_ground_truth(truth, 4, seed=0)
    for field in ("images", "labels", "scores", "boxes"):
        np.testing.assert_array_equal(getattr(first, field), getattr(again, field))
    # one wrong-class copy and one moved copy per image, plus the kept boxes (about 80 % of 90)
    assert 2 * 30 + 55 <= len(first.labels) <= 2 * 30 + 90
    assert ((first.labels >= 1) & (first.labels <= 4)).all()
    ap = np.nanmean(evaluate_detections(first, truth, 4)["ap11"])
    assert 0.3 < ap < 0.95  # misses, jitter beyond IoU 0.5 and false positives all cost something
    stricter = np.nanmean(evaluate_detections(first, truth, 4, iou_threshold=0.6)["ap11"])
    assert ap - stricter > 0.01  # a changed matching threshold shows in these exact rows
    assert not np.array_equal(perturbed_ground_truth(truth, 4, seed=1).boxes, first.boxes)
