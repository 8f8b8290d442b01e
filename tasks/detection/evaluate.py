"""VOC detection AP: greedy matching by score, 11-point and all-point AP, COCO-style AP50:95.

Boxes are continuous pixel-edge coordinates (x1, y1, x2, y2), 0-based: the VOC box of 1-based
inclusive pixels xmin..xmax is [xmin - 1, xmax]. With this convention the IoU equals the VOC
devkit's (which adds 1 to widths of inclusive pixel boxes) without any +1.

Matching follows the VOC devkit (VOCevaldet / voc_eval.py): detections of one class are taken by
decreasing score; each is compared with the ground truth of its image and assigned the box of
highest IoU. Above the threshold: a difficult box makes the detection ignored (neither TP nor
FP), an unmatched box makes it a TP (the box is then used), an already matched box makes it a
duplicate, i.e. a FP. Otherwise it is a FP. Recall counts non-difficult boxes only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from benchmark.metrics import envelope_ap, eleven_point_ap

COCO_THRESHOLDS = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m) IoU of continuous boxes (x1, y1, x2, y2)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


@dataclass
class GroundTruth:
    """One image's boxes: (n, 4) float, labels (n,) in 1..num_classes, difficult (n,) bool."""

    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray


@dataclass
class Detections:
    """All detections of a split: image index, class label (1-based), score, box."""

    images: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray

    @classmethod
    def concat(cls, parts: list["Detections"]) -> "Detections":
        if not parts:
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 4)))
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("images", "labels", "scores", "boxes")))


def match_class(images, scores, boxes, gt: dict[int, tuple[np.ndarray, np.ndarray]], threshold: float,
                strict: bool = True) -> tuple[np.ndarray, int]:
    """Outcome of each detection of one class in score order: 1 TP, 0 FP (duplicates included);
    ignored detections (best match difficult) are dropped. Returns (outcomes, positives).

    ``gt``: image -> (boxes, difficult) of this class. ``strict``: IoU > threshold (VOC devkit);
    otherwise IoU >= threshold (COCO).
    """
    positives = int(sum(int((~d).sum()) for _, d in gt.values()))
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    used = {image: np.zeros(len(d), dtype=bool) for image, (_, d) in gt.items()}
    outcomes = []
    for i in order:
        image = int(images[i])
        if image not in gt or len(gt[image][0]) == 0:
            outcomes.append(0)
            continue
        gt_boxes, difficult = gt[image]
        iou = box_iou(boxes[i], gt_boxes)[0]
        j = int(np.argmax(iou))
        if (iou[j] > threshold) if strict else (iou[j] >= threshold):
            if difficult[j]:
                continue
            if not used[image][j]:
                used[image][j] = True
                outcomes.append(1)
            else:
                outcomes.append(0)
        else:
            outcomes.append(0)
    return np.asarray(outcomes, dtype=np.float64), positives


def precision_recall_from_outcomes(outcomes: np.ndarray, positives: int) -> tuple[np.ndarray, np.ndarray]:
    tp = np.cumsum(outcomes)
    fp = np.cumsum(1.0 - outcomes)
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    recall = tp / positives if positives > 0 else np.full_like(tp, np.nan)
    return precision, recall


def coco_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """COCO's 101-point AP: the precision envelope sampled at recall 0, 0.01, ..., 1."""
    if len(precision) == 0:
        return 0.0
    envelope = np.maximum.accumulate(np.asarray(precision, dtype=np.float64)[::-1])[::-1]
    at = np.searchsorted(recall, np.linspace(0, 1, 101), side="left")
    return float(np.mean([envelope[i] if i < len(envelope) else 0.0 for i in at]))


def _class_gt(ground_truth: list[GroundTruth], cls: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for image, g in enumerate(ground_truth):
        mask = np.asarray(g.labels) == cls
        if mask.any():
            out[image] = (np.asarray(g.boxes, dtype=np.float64).reshape(-1, 4)[mask],
                          np.asarray(g.difficult, dtype=bool)[mask])
    return out


def evaluate_detections(detections: Detections, ground_truth: list[GroundTruth], num_classes: int,
                        iou_threshold: float = 0.5) -> dict[str, np.ndarray]:
    """Per class (index c = label c + 1): ``ap11`` (VOC07 11-point at IoU > 0.5), ``ap_all``
    (all-point), ``ap50_95`` (COCO 101-point AP averaged over IoU 0.50:0.05:0.95, IoU >= t),
    ``positives`` (non-difficult boxes) and ``detections``. A class without non-difficult ground
    truth has NaN AP (undefined) and is left out of the means."""
    out = {key: np.full(num_classes, np.nan) for key in ("ap11", "ap_all", "ap50_95")}
    out["positives"] = np.zeros(num_classes, dtype=np.int64)
    out["detections"] = np.zeros(num_classes, dtype=np.int64)
    for c in range(num_classes):
        label = c + 1
        mask = detections.labels == label
        images, scores, boxes = detections.images[mask], detections.scores[mask], detections.boxes[mask]
        gt = _class_gt(ground_truth, label)
        outcomes, positives = match_class(images, scores, boxes, gt, iou_threshold, strict=True)
        out["positives"][c], out["detections"][c] = positives, int(mask.sum())
        if positives == 0:
            continue
        precision, recall = precision_recall_from_outcomes(outcomes, positives)
        out["ap11"][c] = eleven_point_ap(precision, recall)
        out["ap_all"][c] = envelope_ap(precision, recall)
        coco = []
        for t in COCO_THRESHOLDS:
            o, p = match_class(images, scores, boxes, gt, float(t), strict=False)
            coco.append(coco_ap(*precision_recall_from_outcomes(o, p)))
        out["ap50_95"][c] = float(np.mean(coco))
    return out


def perturbed_ground_truth(ground_truth: list[GroundTruth], num_classes: int, seed: int = 0) -> Detections:
    """Detections made from the ground truth alone, for an exact check of the evaluator on real
    annotations: each box is found with probability 0.8, its corners jittered by up to 20 % of its
    size (so some fall under IoU 0.5), with a score that favours small jitter; each image adds a
    wrong-class copy of one of its boxes and one box moved off its object. Same annotations and
    seed, same numbers on every machine: a change in the mAP of these rows is a change in the
    evaluator, the annotation reader or the matching, never in a model."""
    rng = np.random.default_rng(seed)
    images, labels, scores, boxes = [], [], [], []
    for index, gt in enumerate(ground_truth):
        for box, label in zip(np.asarray(gt.boxes, dtype=np.float64).reshape(-1, 4), np.asarray(gt.labels)):
            size = np.array([box[2] - box[0], box[3] - box[1]] * 2)
            jitter = rng.uniform(-0.2, 0.2, 4)
            if rng.random() < 0.8:
                images.append(index), labels.append(int(label)), boxes.append(box + jitter * size)
                scores.append(float(1.0 - np.abs(jitter).mean() + 0.1 * rng.random()))
        if len(gt.boxes):
            pick = int(rng.integers(len(gt.boxes)))
            box, label = np.asarray(gt.boxes[pick], dtype=np.float64), int(gt.labels[pick])
            wrong = 1 + (label + int(rng.integers(num_classes - 1))) % num_classes
            moved = box + np.array([1, 0, 1, 0]) * 1.5 * (box[2] - box[0])
            for lab, b in ((wrong, box), (label, moved)):
                images.append(index), labels.append(lab), boxes.append(b), scores.append(float(rng.random()))
    return Detections(np.asarray(images, np.int64), np.asarray(labels, np.int64), np.asarray(scores, np.float64),
                      np.asarray(boxes, np.float64).reshape(-1, 4))
