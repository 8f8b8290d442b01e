"""What Fast R-CNN training and inference do with boxes: match RoIs to ground truth, sample a
balanced minibatch of them, encode regression targets and decode predicted deltas.

The arithmetic is torchvision's (``torchvision.models.detection._utils``: ``Matcher``,
``BalancedPositiveNegativeSampler``, ``BoxCoder``) operation for operation and draw for draw, so
that detectors trained before this module existed give the same numbers bit for bit;
tests/tasks/detection/test_box_targets.py holds it to that with torchvision's code as the oracle.
It is kept here because that module is private to torchvision and may change under us.
"""

from __future__ import annotations

import math

import torch

BELOW_THRESHOLD = -1  # a match index meaning: best IoU under the foreground threshold (background)
# Detectron's cap on decoded log-scale deltas, so that exp() of a wild prediction stays finite
LOG_SCALE_CLIP = math.log(1000.0 / 16)


def match_to_ground_truth(iou: torch.Tensor, threshold: float) -> torch.Tensor:
    """For each column of ``iou`` (ground truth x RoIs) the index of its best ground-truth box, or
    ``BELOW_THRESHOLD`` where that IoU is under ``threshold``; ties go to the first box."""
    if iou.numel() == 0:
        raise ValueError("matching needs at least one ground-truth box and one RoI")
    best_iou, matches = iou.max(dim=0)
    matches[best_iou < threshold] = BELOW_THRESHOLD
    return matches


def sample_balanced(labels: torch.Tensor, batch_size: int, positive_fraction: float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean masks of the positive (label >= 1) and negative (label 0) RoIs kept: at most
    ``int(batch_size * positive_fraction)`` positives, negatives filling the rest; labels -1 are
    never drawn. Draws from torch's global generator: two ``randperm`` calls, positives first."""
    positive = torch.where(labels >= 1)[0]
    negative = torch.where(labels == 0)[0]
    num_pos = min(positive.numel(), int(batch_size * positive_fraction))
    num_neg = min(negative.numel(), batch_size - num_pos)
    chosen_pos = positive[torch.randperm(positive.numel(), device=positive.device)[:num_pos]]
    chosen_neg = negative[torch.randperm(negative.numel(), device=negative.device)[:num_neg]]
    pos_mask = torch.zeros_like(labels, dtype=torch.bool)
    neg_mask = torch.zeros_like(labels, dtype=torch.bool)
    pos_mask[chosen_pos] = True
    neg_mask[chosen_neg] = True
    return pos_mask, neg_mask


def _corners_to_centres(boxes: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x1, y1, x2, y2 = (boxes[:, i].unsqueeze(1) for i in range(4))
    widths, heights = x2 - x1, y2 - y1
    return x1 + 0.5 * widths, y1 + 0.5 * heights, widths, heights


def encode_boxes(targets: torch.Tensor, rois: torch.Tensor, weights: tuple[float, float, float, float]
                 ) -> torch.Tensor:
    """(n, 4) regression targets of ``targets`` (x1, y1, x2, y2) relative to ``rois``: weighted
    centre offsets in RoI sizes and log size ratios (R-CNN's parametrisation)."""
    # the weights as a tensor of the boxes' dtype, as torchvision multiplies them
    wx, wy, ww, wh = torch.as_tensor(weights, dtype=targets.dtype, device=targets.device)
    roi_x, roi_y, roi_w, roi_h = _corners_to_centres(rois)
    gt_x, gt_y, gt_w, gt_h = _corners_to_centres(targets)
    return torch.cat((wx * (gt_x - roi_x) / roi_w, wy * (gt_y - roi_y) / roi_h,
                      ww * torch.log(gt_w / roi_w), wh * torch.log(gt_h / roi_h)), dim=1)


def decode_boxes(deltas: torch.Tensor, rois: torch.Tensor, weights: tuple[float, float, float, float]
                 ) -> torch.Tensor:
    """Boxes (x1, y1, x2, y2) from ``deltas`` (n, 4 x classes) applied to ``rois`` (n, 4): the
    inverse of ``encode_boxes``, log-scale deltas capped at ``LOG_SCALE_CLIP``; (n, 4 x classes)."""
    rois = rois.to(deltas.dtype)
    widths = rois[:, 2] - rois[:, 0]
    heights = rois[:, 3] - rois[:, 1]
    ctr_x = rois[:, 0] + 0.5 * widths
    ctr_y = rois[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    dw = torch.clamp(deltas[:, 2::4] / ww, max=LOG_SCALE_CLIP)
    dh = torch.clamp(deltas[:, 3::4] / wh, max=LOG_SCALE_CLIP)
    pred_x = dx * widths[:, None] + ctr_x[:, None]
    pred_y = dy * heights[:, None] + ctr_y[:, None]
    # half sizes through a 0-dim tensor of the deltas' dtype, as torchvision computes them
    half = torch.tensor(0.5, dtype=deltas.dtype, device=deltas.device)
    half_w = half * (torch.exp(dw) * widths[:, None])
    half_h = half * (torch.exp(dh) * heights[:, None])
    return torch.stack((pred_x - half_w, pred_y - half_h, pred_x + half_w, pred_y + half_h), dim=2).flatten(1)
