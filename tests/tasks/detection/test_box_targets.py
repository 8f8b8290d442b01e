"""tasks.detection.box_targets against torchvision's private implementation it replaces
(``torchvision.models.detection._utils``), the oracle: equal tensors (torch.equal, not a tolerance)
on random inputs, and the same draws from torch's generator, so that detectors train and detect
bit for bit as before. Skipped where torchvision no longer has that module."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import box_iou

from tasks.detection.box_targets import (BELOW_THRESHOLD, LOG_SCALE_CLIP, decode_boxes, encode_boxes,
                                         match_to_ground_truth, sample_balanced)
from tasks.detection.train import BOX_WEIGHTS, DetectionSetup, sample_rois
from benchmark.training import Schedule

oracle = pytest.importorskip("torchvision.models.detection._utils")


def random_boxes(generator: torch.Generator, n: int, dtype=torch.float32, size: float = 300.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator, dtype=torch.float64) * size
    wh = torch.rand(n, 2, generator=generator, dtype=torch.float64) * size / 2 + 1.0
    return torch.cat([xy, xy + wh], dim=1).to(dtype)


@pytest.mark.parametrize("seed", range(5))
def test_matching_equals_torchvision(seed) -> None:
    generator = torch.Generator().manual_seed(seed)
    iou = torch.rand(4 + seed, 200, generator=generator)
    iou[:, ::7] = 0.5  # exactly at the threshold: foreground (>=), and ties between boxes (first wins)
    iou[:, ::11] = 0.0
    matcher = oracle.Matcher(0.5, 0.5, allow_low_quality_matches=False)
    ours = match_to_ground_truth(iou, 0.5)
    assert torch.equal(ours, matcher(iou))
    assert (ours == BELOW_THRESHOLD).any() and (ours >= 0).any()
    with pytest.raises(ValueError):
        match_to_ground_truth(torch.zeros(0, 5), 0.5)


@pytest.mark.parametrize(("batch_size", "fraction", "n_pos", "n_neg", "n_ignored"),
                         [(64, 0.25, 40, 300, 10), (64, 0.25, 3, 300, 0), (64, 0.25, 40, 5, 2), (16, 0.5, 0, 0, 4),
                          (128, 0.25, 1000, 1000, 100)])
def test_balanced_sampling_equals_torchvision_draw_for_draw(batch_size, fraction, n_pos, n_neg, n_ignored) -> None:
    generator = torch.Generator().manual_seed(n_pos + n_neg)
    labels = torch.cat([torch.randint(1, 21, (n_pos,), generator=generator), torch.zeros(n_neg, dtype=torch.int64),
                        torch.full((n_ignored,), -1)])
    labels = labels[torch.randperm(len(labels), generator=generator)]
    sampler = oracle.BalancedPositiveNegativeSampler(batch_size, fraction)
    torch.manual_seed(7)
    (their_pos,), (their_neg,) = sampler([labels])
    after_theirs = torch.rand(3)
    torch.manual_seed(7)
    our_pos, our_neg = sample_balanced(labels, batch_size, fraction)
    assert torch.equal(our_pos, their_pos.bool()) and torch.equal(our_neg, their_neg.bool())
    assert torch.equal(torch.rand(3), after_theirs)  # the generator advanced exactly as much
    assert int(our_pos.sum()) == min(n_pos, int(batch_size * fraction))
    assert int(our_neg.sum()) == min(n_neg, batch_size - int(our_pos.sum()))
    assert not (our_pos & (labels < 1)).any() and not (our_neg & (labels != 0)).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("weights", [BOX_WEIGHTS, (1.0, 1.0, 1.0, 1.0), (10.3, 9.7, 5.1, 4.9)])
def test_encoding_and_decoding_equal_torchvision(dtype, weights) -> None:
    generator = torch.Generator().manual_seed(3)
    rois, targets = random_boxes(generator, 500, dtype), random_boxes(generator, 500, dtype)
    coder = oracle.BoxCoder(weights)
    encoded = encode_boxes(targets, rois, weights)
    assert torch.equal(encoded, coder.encode_single(targets, rois))
    classes = 21
    deltas = (torch.randn(500, 4 * classes, generator=generator, dtype=torch.float64) * 3).to(dtype)
    deltas[:5, 2::4] = 50.0  # beyond the log-scale clip: capped, as torchvision caps it
    decoded = decode_boxes(deltas, rois, weights)
    assert torch.equal(decoded, coder.decode_single(deltas, rois))
    assert decoded.shape == (500, 4 * classes) and torch.isfinite(decoded).all()
    widths = (decoded[:5, 2::4] - decoded[:5, 0::4]) / (rois[:5, 2:3] - rois[:5, 0:1])
    assert torch.allclose(widths.double(), torch.full_like(widths, math.exp(LOG_SCALE_CLIP)).double(), rtol=1e-4)
    # decoding the encoded targets gives the targets back (to rounding)
    assert torch.allclose(decode_boxes(encoded, rois, weights), targets, atol=1e-3 if dtype == torch.float32 else 1e-9)


def _oracle_sample_rois(proposals, gt_boxes, gt_labels, setup):
    """sample_rois as it was written over torchvision's classes, before box_targets replaced them."""
    matcher = oracle.Matcher(setup.fg_iou, setup.fg_iou, allow_low_quality_matches=False)
    sampler = oracle.BalancedPositiveNegativeSampler(setup.rois_per_image, setup.fg_fraction)
    coder = oracle.BoxCoder(BOX_WEIGHTS)
    rois = torch.cat([proposals, gt_boxes]) if len(gt_boxes) else proposals
    if len(gt_boxes):
        matched = matcher(box_iou(gt_boxes, rois))
        labels = gt_labels[matched.clamp(min=0)].clone()
        labels[matched == oracle.Matcher.BELOW_LOW_THRESHOLD] = 0
        labels[matched == oracle.Matcher.BETWEEN_THRESHOLDS] = -1
        targets_boxes = gt_boxes[matched.clamp(min=0)]
    else:
        labels = torch.zeros(len(rois), dtype=torch.int64)
        targets_boxes = rois
    positive, negative = sampler([labels])
    keep = torch.where(positive[0] | negative[0])[0]
    rois, labels = rois[keep], labels[keep]
    return rois, labels, coder.encode_single(targets_boxes[keep], rois)


@pytest.mark.parametrize("n_gt", [0, 1, 6])
def test_sample_rois_equals_the_torchvision_version(n_gt) -> None:
    generator = torch.Generator().manual_seed(n_gt)
    gt_boxes = random_boxes(generator, n_gt)
    # proposals around the ground truth (foreground) and anywhere (mostly background)
    near = (gt_boxes.repeat(30, 1) + torch.randn(30 * n_gt, 4, generator=generator) * 8) if n_gt else gt_boxes
    near = torch.cat([near[:, :2], torch.maximum(near[:, 2:], near[:, :2] + 1)], dim=1)
    proposals = torch.cat([near, random_boxes(generator, 400)])
    gt_labels = torch.randint(1, 21, (n_gt,), generator=generator)
    setup = DetectionSetup(schedule=Schedule(name="test", iterations=1, base_lr=0.01, batch_size=2))
    results = []
    for sample in (sample_rois, _oracle_sample_rois):
        torch.manual_seed(11)
        results.append(sample(proposals, gt_boxes, gt_labels, setup))
    for ours, theirs in zip(*results):
        assert torch.equal(ours, theirs)
    rois, labels, targets = results[0]
    assert len(rois) == setup.rois_per_image and targets.shape == (len(rois), 4)
    foreground = int((labels > 0).sum())
    assert (0 < foreground <= setup.rois_per_image * setup.fg_fraction) if n_gt else foreground == 0
